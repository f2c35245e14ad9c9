"""One module per command (named after it); COMMANDS lists them for the CLI, in pipeline order."""

from .app import app_cmd
from .build_index import build_index_cmd
from .classify import classify_cmd
from .compare import compare_cmd
from .dedup import dedup_cmd
from .filter import filter_cmd
from .labels import labels_cmd
from .report import report_cmd
from .review import review_cmd
from .sample import sample_cmd
from .search import search_cmd
from .sql import sql_cmd

COMMANDS = [build_index_cmd, labels_cmd, classify_cmd, dedup_cmd, filter_cmd, search_cmd, sample_cmd, review_cmd,
            report_cmd, compare_cmd, app_cmd, sql_cmd]
