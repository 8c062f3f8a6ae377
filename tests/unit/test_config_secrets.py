"""`imds config`, and a refused setting's error line, print no password of a URL setting."""

from __future__ import annotations

import pytest

from imds.cli import EXIT_USAGE, main

ROLE = "arn:aws:iam::111122223333:role/app"
PASSWORD = "s3cr3t-Pa55"


# (URL given, URL shown): a password is starred, the rest is shown as given.
URLS = [
    (f"http://alice:{PASSWORD}@127.0.0.1:4566", "http://alice:****@127.0.0.1:4566"),
    (f"https://alice:{PASSWORD}@[::1]:4566/sts?x=1", "https://alice:****@[::1]:4566/sts?x=1"),
    (f"http://:{PASSWORD}@127.0.0.1:4566/", "http://:****@127.0.0.1:4566/"),
    (f"http://alice:{PASSWORD}:more@127.0.0.1/", "http://alice:****@127.0.0.1/"),
    ("http://alice@127.0.0.1:4566/", "http://alice@127.0.0.1:4566/"),
    ("http://127.0.0.1:4566/", "http://127.0.0.1:4566/"),
]


class TestUrlPasswordsAreMasked:
    def test_config_shows_the_user_and_stars(self, capsys: pytest.CaptureFixture[str]) -> None:
        shown = []
        for url, _ in URLS:
            assert 0 == main(["config", "--role-arn", ROLE, "--sts-endpoint-url", url],
                             environ={})
            out = capsys.readouterr().out
            assert PASSWORD not in out
            shown.append(out.split("sts_endpoint_url = ")[1].split("\n")[0])
        assert [expected for _, expected in URLS] == shown

    def test_a_refused_url_is_masked_in_the_error_too(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        url = f"ftp://alice:{PASSWORD}@127.0.0.1/"
        assert EXIT_USAGE == main(["config", "--role-arn", ROLE, "--sts-endpoint-url", url],
                                  environ={})
        err = capsys.readouterr().err
        assert "--sts-endpoint-url: expected an http(s) URL" in err
        assert "ftp://alice:****@127.0.0.1/" in err
        assert PASSWORD not in err
