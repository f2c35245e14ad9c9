"""One module per command (named after it); COMMANDS lists them for the CLI, in pipeline order."""

from .app import app_cmd
from .build_index import build_index
from .classify import classify_cmd
from .compare import compare_cmd
from .dedup import dedup_cmd
from .filter import filter_cmd
from .labels import labels_cmd
from .report import report_cmd
from .review import review
from .sample import sample
from .search import search_cmd
from .sql import sql

COMMANDS = [build_index, labels_cmd, classify_cmd, dedup_cmd, filter_cmd, search_cmd, sample, review, report_cmd, compare_cmd, app_cmd, sql]
