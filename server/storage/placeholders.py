"""`?` placeholders -> PostgreSQL's `$1..$n`, once per statement text.

SQL is written once with `?` (what sqlite3 takes); asyncpg wants `$n`. The rewrite skips
string literals ('...', E'...' with backslash escapes, $tag$...$tag$), quoted names and
comments, so a `?` inside any of them stays. PostgreSQL's jsonb operators `?`, `?|` and
`?&` would be taken for placeholders: write jsonb_exists(), jsonb_exists_any() and
jsonb_exists_all() instead.
"""

from __future__ import annotations

import functools
import re

__all__ = ["to_dollar"]


@functools.lru_cache(maxsize=2048)
def to_dollar(sql: str) -> str:
    """`?` placeholders -> `$1..$n`, leaving literals, quoted names and comments alone."""
    if "?" not in sql:
        return sql
    out: list[str] = []
    count = 0
    start = i = 0
    end = len(sql)
    while i < end:
        char = sql[i]
        if char == "'":
            # E'...' strings take backslash escapes; standard ones only '' (the default
            # standard_conforming_strings = on).
            escapes = i > 0 and sql[i - 1] in "eE" and (i < 2 or not _name_char(sql[i - 2]))
            i = _skip_quoted(sql, i, "'", escapes)
        elif char == '"':
            i = _skip_quoted(sql, i, '"', False)
        elif char == "-" and sql.startswith("--", i):
            newline = sql.find("\n", i)
            i = end if newline == -1 else newline + 1
        elif char == "/" and sql.startswith("/*", i):
            i = _skip_block_comment(sql, i)
        elif char == "$" and not (i > 0 and _name_char(sql[i - 1])):
            tag = _DOLLAR_TAG.match(sql, i)
            if tag is None:
                i += 1
            else:
                close = sql.find(tag.group(), tag.end())
                i = end if close == -1 else close + len(tag.group())
        elif char == "?":
            count += 1
            out.append(sql[start:i])
            out.append(f"${count}")
            i += 1
            start = i
        else:
            i += 1
    out.append(sql[start:])
    return "".join(out)


# $$ or $tag$ (a tag is a name without `$`); `$1` is a parameter, not a quote.
_DOLLAR_TAG = re.compile(r"\$(?:[^\W\d]\w*)?\$")


def _name_char(char: str) -> bool:
    return char.isalnum() or char in "_$"


def _skip_quoted(sql: str, i: int, quote: str, escapes: bool) -> int:
    """Index just past the literal opening at sql[i] (a doubled quote does not close it)."""
    j = i + 1
    end = len(sql)
    while j < end:
        char = sql[j]
        if escapes and char == "\\":
            j += 2
        elif char == quote:
            if j + 1 < end and sql[j + 1] == quote:
                j += 2
            else:
                return j + 1
        else:
            j += 1
    return end


def _skip_block_comment(sql: str, i: int) -> int:
    # PostgreSQL's block comments nest.
    depth = 0
    j = i
    end = len(sql)
    while j < end:
        if sql.startswith("/*", j):
            depth += 1
            j += 2
        elif sql.startswith("*/", j):
            depth -= 1
            j += 2
            if depth == 0:
                return j
        else:
            j += 1
    return end
