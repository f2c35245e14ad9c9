"""Each module here defines click commands for one stage; COMMANDS lists them for the CLI."""

from .build_index import build_index
from .classify import classify_cmd, filter_cmd, labels_cmd, search_cmd
from .review import report_cmd, review, sample
from .sql import sql

COMMANDS = [build_index, labels_cmd, classify_cmd, filter_cmd, search_cmd, sample, review, report_cmd, sql]
