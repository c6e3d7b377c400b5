"""`?` -> `$n` for PostgreSQL (pure text: no server needed)."""

import pytest

from server.storage.placeholders import to_dollar


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT 1", "SELECT 1"),
        ("SELECT ?, ? FROM t WHERE a = ?", "SELECT $1, $2 FROM t WHERE a = $3"),
        ("SELECT 'a?b', ?", "SELECT 'a?b', $1"),
        ("SELECT 'it''s ?', ?", "SELECT 'it''s ?', $1"),
        ("SELECT E'\\'?', ?", "SELECT E'\\'?', $1"),
        ("SELECT e'a\\\\', ?", "SELECT e'a\\\\', $1"),
        # A backslash in a standard string is a plain character: the quote after it closes.
        ("SELECT 'a\\', ?", "SELECT 'a\\', $1"),
        ('SELECT "odd?col" FROM t WHERE x = ?', 'SELECT "odd?col" FROM t WHERE x = $1'),
        ('SELECT "a""?" , ?', 'SELECT "a""?" , $1'),
        ("SELECT $$ ? $$, ?", "SELECT $$ ? $$, $1"),
        ("SELECT $fn$ '?' $x$ ? $fn$, ?", "SELECT $fn$ '?' $x$ ? $fn$, $1"),
        ("SELECT ? -- what?\n, ?", "SELECT $1 -- what?\n, $2"),
        ("SELECT /* ? /* nested ? */ still ? */ ?", "SELECT /* ? /* nested ? */ still ? */ $1"),
        ("SELECT a$b$c, ?", "SELECT a$b$c, $1"),
        ("SELECT ?::jsonb, ?", "SELECT $1::jsonb, $2"),
        ("SELECT 'never closed ?", "SELECT 'never closed ?"),
    ],
)
def test_placeholders_are_rewritten_outside_literals_and_comments(sql, expected):
    assert to_dollar(sql) == expected


def test_rewrite_is_cached_per_statement_text():
    sql = "SELECT ? AS cached_once"
    to_dollar(sql)
    hits = to_dollar.cache_info().hits

    to_dollar(sql)

    assert to_dollar.cache_info().hits == hits + 1
