"""Stateless IMDSv2 tokens: parsing the TTL, issuing, verifying."""

from __future__ import annotations

import base64

import pytest

from imds.ec2.tokens import _SEEN_MAX, TOKEN_LENGTH, TokenSigner, parse_ttl
from imds.errors import InvalidTTL


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class TestParseTTL:
    @pytest.mark.parametrize("raw, expected", [("1", 1), ("21600", 21600), ("300", 300)])
    def test_plain_integers_in_range_are_accepted(self, raw: str, expected: int) -> None:
        assert expected == parse_ttl(raw)

    @pytest.mark.parametrize(
        "raw",
        [
            pytest.param(None, id="missing"),
            pytest.param("", id="empty"),
            pytest.param("0", id="zero"),
            pytest.param("-1", id="negative"),
            pytest.param("21601", id="above-six-hours"),
            pytest.param("30000", id="js-sdk-pr-8254"),
            pytest.param("60.0", id="decimal"),
            pytest.param("+60", id="plus-sign"),
            pytest.param(" 60", id="leading-space"),
            pytest.param("060", id="leading-zero"),
            pytest.param("６０", id="fullwidth-digits"),
            pytest.param("1e3", id="exponent"),
            pytest.param("9" * 40, id="huge"),
        ],
    )
    def test_anything_else_is_invalid(self, raw: str | None) -> None:
        """[T-03] [T-04]: not a plain decimal integer in 1..21600 is a 400."""
        with pytest.raises(InvalidTTL):
            parse_ttl(raw)


class TestTokenSigner:
    def test_token_looks_like_ec2s(self) -> None:
        """[T-07] 56 URL-safe base64 characters, `AQAEA` prefix, `=` padding."""
        token = TokenSigner(FakeClock()).issue(21600)
        assert TOKEN_LENGTH == len(token) == 56
        assert token.startswith("AQAEA")
        assert token.endswith("==")
        base64.urlsafe_b64decode(token)

    def test_issued_token_verifies_until_its_ttl_elapses(self) -> None:
        clock = FakeClock()
        signer = TokenSigner(clock)
        token = signer.issue(10, "127.0.0.1")
        verified = signer.verify(token, "127.0.0.1")
        assert verified is not None
        assert 10 == verified.remaining(clock.now)
        clock.now += 9.999
        assert signer.verify(token, "127.0.0.1") is not None
        clock.now += 0.001
        # [T-21] invalid from the instant created + ttl.
        assert signer.verify(token, "127.0.0.1") is None

    def test_tokens_are_unpredictable(self) -> None:
        signer = TokenSigner(FakeClock())
        tokens = {signer.issue(60) for _ in range(1000)}
        assert 1000 == len(tokens)

    def test_token_from_another_address_is_refused(self) -> None:
        signer = TokenSigner(FakeClock())
        token = signer.issue(60, "10.0.0.2")
        assert signer.verify(token, "10.0.0.3") is None
        assert signer.verify(token, "10.0.0.2") is not None

    def test_a_token_already_verified_is_still_refused_from_another_address(self) -> None:
        signer = TokenSigner(FakeClock())
        token = signer.issue(60, "10.0.0.2")
        assert signer.verify(token, "10.0.0.2") is not None
        assert signer.verify(token, "10.0.0.3") is None
        assert signer.verify(token, "10.0.0.2") is not None

    def test_verified_tokens_remembered_are_bounded(self) -> None:
        signer = TokenSigner(FakeClock())
        for _ in range(_SEEN_MAX + 10):
            assert signer.verify(signer.issue(60, "10.0.0.2"), "10.0.0.2") is not None
        assert 0 < len(signer._seen) <= _SEEN_MAX

    def test_token_signed_by_another_process_is_refused(self) -> None:
        clock = FakeClock()
        token = TokenSigner(clock).issue(60)
        assert TokenSigner(clock).verify(token) is None

    def test_every_single_byte_change_is_refused(self) -> None:
        signer = TokenSigner(FakeClock())
        token = signer.issue(60)
        assert signer.verify(token) is not None  # remembered as good: its siblings are not
        raw = bytearray(base64.urlsafe_b64decode(token))
        for index in range(len(raw)):
            mutated = bytearray(raw)
            mutated[index] ^= 0x01
            forged = base64.urlsafe_b64encode(bytes(mutated)).decode()
            assert signer.verify(forged) is None, index

    def test_extending_the_expiry_breaks_the_signature(self) -> None:
        clock = FakeClock()
        signer = TokenSigner(clock)
        raw = bytearray(base64.urlsafe_b64decode(signer.issue(1)))
        raw[3:11] = (int(clock.now * 1000) + 10**9).to_bytes(8, "big")
        assert signer.verify(base64.urlsafe_b64encode(bytes(raw)).decode()) is None

    @pytest.mark.parametrize(
        "token",
        ["", "x", "A" * 56, "A" * 55 + "=", "é" * 56, "AQAEA" + "!" * 51, "A" * 1000],
    )
    def test_garbage_is_refused(self, token: str) -> None:
        assert TokenSigner(FakeClock()).verify(token) is None

    def test_non_canonical_spelling_of_a_valid_token_is_refused(self) -> None:
        signer = TokenSigner(FakeClock())
        token = signer.issue(60)
        # The last base64 character before the padding carries unused low bits.
        last = token[-3]
        alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        sibling = alphabet[alphabet.index(last) ^ 1]
        forged = token[:-3] + sibling + token[-2:]
        assert base64.urlsafe_b64decode(forged) == base64.urlsafe_b64decode(token)
        assert signer.verify(forged) is None
