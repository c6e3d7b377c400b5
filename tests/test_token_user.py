"""`sensorcast token --user NAME`: the same identity (`sub` = the user's id, so the same
`user:{id}`) as that user's login token."""

from __future__ import annotations

from pathlib import Path

import jwt

from tests.test_cli import assert_one_line_error, run, run_input, write_config


def test_token_for_a_login_user_names_the_same_user_as_its_login(tmp_path: Path):
    config = str(write_config(tmp_path, {}))
    added = run_input(
        ["--config", config, "user", "add", "alice", "--password-stdin"],
        tmp_path,
        "alice-password\n",
    )
    assert added.returncode == 0, added.stderr

    proc = run(["--config", config, "token", "--user", "alice"], tmp_path)
    no_role = run(["--config", config, "token", "--sub", "alice"], tmp_path)
    unknown = run(["--config", config, "token", "--user", "zed"], tmp_path)

    assert proc.returncode == 0, proc.stderr
    secret = (tmp_path / "var" / "jwt_secret").read_text(encoding="utf-8").strip()
    claims = jwt.decode(proc.stdout.strip(), secret, algorithms=["HS256"])
    # What POST /api/v1/auth/login gives alice: sub is her id, name her username.
    assert (claims["sub"], claims["name"], claims["role"]) == ("1", "alice", "user")
    assert_one_line_error(no_role, 1, "sensorcast: token: --role is required")
    assert_one_line_error(unknown, 1, "sensorcast: user 'zed' not found")
