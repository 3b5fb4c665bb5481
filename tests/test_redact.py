"""Secret masking: whole texts, objects, streams split anywhere, and log records."""

from __future__ import annotations

import base64
import io
import itertools
import json
import logging
import random
import stat
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hal9999.redact import (
    REDACTED,
    SEPARATORS,
    MaskingFilter,
    SecretMasker,
    StreamMasker,
    configure_logging,
    forwarded_is_secret,
    masker_from_env,
)

SECRET = "sk-ant-api03-SECRETVALUE"


def test_mask_replaces_every_occurrence() -> None:
    masker = SecretMasker([SECRET])
    text = f"key={SECRET} again {SECRET}."
    assert masker.mask(text) == f"key={REDACTED} again {REDACTED}."


def test_short_and_empty_values_are_ignored() -> None:
    masker = SecretMasker(["", "abc"])
    assert len(masker) == 0
    assert not masker
    assert masker.mask("abc abc") == "abc abc"


def test_text_without_secrets_is_returned_unchanged() -> None:
    masker = SecretMasker([SECRET])
    assert masker.mask("nothing to see") == "nothing to see"
    assert masker.mask("") == ""


def test_secret_containing_another_is_masked_whole() -> None:
    masker = SecretMasker(["token", "token-extended-part"])
    assert masker.mask("a token-extended-part b token c") == f"a {REDACTED} b {REDACTED} c"


def test_overlapping_secrets_leave_no_fragment() -> None:
    masker = SecretMasker(["abcdef", "defghi"])
    assert masker.mask("xxabcdefghixx") == f"xx{REDACTED}xx"


def test_adjacent_secrets_are_masked_separately() -> None:
    masker = SecretMasker(["abcd", "efgh"])
    assert masker.mask("abcdefgh") == REDACTED + REDACTED


@pytest.mark.parametrize(
    "encoded",
    [
        base64.b64encode(SECRET.encode()).decode(),
        base64.b64encode(SECRET.encode()).decode().rstrip("="),
        urllib.parse.quote("p@ss/w:rd&x", safe=""),
        json.dumps('quote"back\\slash')[1:-1],
    ],
)
def test_common_encodings_are_masked(encoded: str) -> None:
    masker = SecretMasker([SECRET, "p@ss/w:rd&x", 'quote"back\\slash'])
    masked = masker.mask(f"<{encoded}>")
    assert encoded.rstrip("=") not in masked
    assert masked.startswith(f"<{REDACTED}")


JS_SECRET = 'pässwörd"\\x!(y)*'
"""A password with non-ASCII, a quote, a backslash and what encodeURIComponent leaves."""


@pytest.mark.parametrize(
    "encoded",
    [
        # JSON.stringify (stream-json of Claude Code, Gemini CLI, opencode) keeps non-ASCII,
        # so neither the raw value nor json.dumps' \u form was in that agent's JSON line.
        json.dumps(JS_SECRET, ensure_ascii=False)[1:-1],
        # encodeURIComponent leaves !'()* as they are; quote(safe="") escapes them.
        urllib.parse.quote(JS_SECRET, safe="!'()*"),
    ],
)
def test_javascripts_encodings_are_masked(encoded: str) -> None:
    masker = SecretMasker([JS_SECRET])
    for text in (f'{{"text":"{encoded}"}}', encoded):
        masked = masker.mask(text)
        assert encoded not in masked and REDACTED in masked, masked
        assert _feed_all(masker, [text[:5], text[5:12], text[12:]]) == masked


def test_mask_obj_walks_containers_and_keeps_types() -> None:
    masker = SecretMasker([SECRET])
    obj = {"a": [SECRET, 1, None], "b": (f"x{SECRET}", 2.5), SECRET: {"c": True}}
    assert masker.mask_obj(obj) == {
        "a": [REDACTED, 1, None],
        "b": (f"x{REDACTED}", 2.5),
        REDACTED: {"c": True},
    }


def _feed_all(masker: SecretMasker, chunks: list[str]) -> str:
    stream = StreamMasker(masker)
    return "".join(stream.feed(chunk) for chunk in chunks) + stream.flush()


STREAM_CASES = [
    (["abcdef"], "--abcdef--"),
    (["abcdef"], "abcdefabcdef"),
    (["abcdef"], "ababcdeabcdef"),
    (["abcdef", "defghi"], "xxabcdefghixx"),
    (["abcdef", "cdefgh"], "zabcdefghz"),
    (["abcd", "efgh"], "abcdefgh"),
    (["aaaa"], "aaaaaaaaaab"),
    (["token", "token-extended-part"], "a token-extended-par token-extended-part b"),
    ([SECRET], f"Authorization: Bearer {SECRET}\nsk-ant-api03-SECRET"),
]


@pytest.mark.parametrize(("secrets", "text"), STREAM_CASES)
def test_stream_split_at_every_boundary_matches_whole_mask(secrets: list[str], text: str) -> None:
    masker = SecretMasker(secrets)
    expected = masker.mask(text)
    for i in range(len(text) + 1):
        for j in range(i, len(text) + 1):
            out = _feed_all(masker, [text[:i], text[i:j], text[j:]])
            assert out == expected, (i, j)
            for secret in secrets:
                assert secret not in out


@pytest.mark.parametrize(("secrets", "text"), STREAM_CASES)
def test_stream_one_character_at_a_time(secrets: list[str], text: str) -> None:
    masker = SecretMasker(secrets)
    assert _feed_all(masker, list(text)) == masker.mask(text)


def _random_chunks(rng: random.Random, text: str) -> Iterator[str]:
    pos = 0
    while pos < len(text):
        step = rng.randint(1, 7)
        yield text[pos : pos + step]
        pos += step


def test_stream_random_chunks_never_leak() -> None:
    rng = random.Random(1234)
    secrets = ["s3cr3t", "t0ken", "3t0k"]
    masker = SecretMasker(secrets)
    alphabet = "s3cr3t0ken -"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) + "s3cr3t0ken"
        out = _feed_all(masker, list(_random_chunks(rng, text)))
        assert out == masker.mask(text), text
        assert not any(secret in out for secret in secrets)


def test_stream_emits_text_that_cannot_start_a_secret_at_once() -> None:
    stream = SecretMasker(["abcdef"]).stream()
    assert stream.feed("hello world") == "hello world"
    assert stream.feed("xyzabc") == "xyz"  # "abc" may grow into the secret
    assert stream.feed("dXX") == "abcdXX"
    assert stream.flush() == ""


def test_stream_holds_back_at_most_max_len_minus_one() -> None:
    masker = SecretMasker(["abcdef"])
    stream = masker.stream()
    out = stream.feed("q" * 50 + "abcde")
    assert out == "q" * 50
    assert stream.flush() == "abcde"


def test_stream_without_secrets_passes_through() -> None:
    stream = SecretMasker().stream()
    assert stream.feed("abc") == "abc"
    assert stream.flush() == ""


def _logger_with_filter(masker: SecretMasker) -> tuple[logging.Logger, io.StringIO]:
    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.addFilter(MaskingFilter(masker))
    logger = logging.getLogger(f"test.redact.{id(buffer)}")
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    return logger, buffer


def test_logging_filter_masks_message_and_args() -> None:
    logger, buffer = _logger_with_filter(SecretMasker([SECRET]))
    logger.warning("key %s in %r", SECRET, {"k": SECRET})
    logger.info(f"inline {SECRET}")
    output = buffer.getvalue()
    assert SECRET not in output
    assert output.count(REDACTED) == 3


def test_logging_filter_masks_tracebacks() -> None:
    logger, buffer = _logger_with_filter(SecretMasker([SECRET]))
    try:
        raise RuntimeError(f"bad key {SECRET}")
    except RuntimeError:
        logger.exception("failed")
    output = buffer.getvalue()
    assert "RuntimeError: bad key [REDACTED]" in output
    assert SECRET not in output


def test_logging_filter_survives_a_broken_format_string() -> None:
    logger, buffer = _logger_with_filter(SecretMasker([SECRET]))
    logger.warning("%d items", SECRET)
    output = buffer.getvalue()
    assert SECRET not in output
    assert REDACTED in output


def test_configure_logging_installs_masking_handlers(tmp_path: Path) -> None:
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    log_file = tmp_path / "logs" / "hal.log"
    try:
        configure_logging(SecretMasker([SECRET]), logging.INFO, None)
        handlers = configure_logging(SecretMasker([SECRET]), logging.INFO, log_file)
        assert len(handlers) == 2
        assert [h for h in root.handlers if h not in before] == handlers  # replaced, not added
        assert all(any(isinstance(f, MaskingFilter) for f in h.filters) for h in handlers)
        logging.getLogger("hal9999.test").info("using %s", SECRET)
        for handler in handlers:
            handler.flush()
        content = log_file.read_text()
        assert f"using {REDACTED}" in content
        assert SECRET not in content
        assert stat.S_IMODE(log_file.stat().st_mode) == 0o600
    finally:
        for handler in [h for h in root.handlers if h not in before]:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(level)


def test_masker_from_env_takes_only_named_set_variables() -> None:
    environ = {"API_KEY": SECRET, "OTHER": "other-secret-value", "EMPTY": ""}
    masker = masker_from_env(["API_KEY", "EMPTY", "MISSING"], environ)
    assert masker.mask(f"{SECRET} other-secret-value") == f"{REDACTED} other-secret-value"


# -- encodings at any offset --------------------------------------------------
ENCODED_SECRET = "hunter2-Pa55word"


def _encoded_forms(secret: str) -> dict[str, str]:
    raw = secret.encode()
    forms = {
        "hex": raw.hex(),
        "HEX": raw.hex().upper(),
        "reversed": secret[::-1],
        "spaced": " ".join(secret),
        "dashed": "-".join(secret),
        "hex dump": " ".join(f"{b:02x}" for b in raw),
        "url lower": urllib.parse.quote(secret + "/", safe="").replace("%2F", "%2f"),
    }
    for pad in range(3):
        # The secret inside a longer base64 blob, at each byte alignment.
        blob = base64.b64encode(b"x" * pad + raw).decode()
        forms[f"base64 +{pad}"] = blob
        forms[f"urlsafe base64 +{pad}"] = base64.urlsafe_b64encode(b"?" * pad + raw).decode()
    wrapped = base64.b64encode(b"pre" + raw).decode()
    forms["wrapped base64"] = wrapped[:9] + "\n" + wrapped[9:]
    return forms


@pytest.mark.parametrize("kind", sorted(_encoded_forms(ENCODED_SECRET)))
def test_encoded_forms_are_masked_at_any_offset(kind: str) -> None:
    masker = SecretMasker([ENCODED_SECRET, ENCODED_SECRET + "/"])
    encoded = _encoded_forms(ENCODED_SECRET)[kind]
    for prefix in ("", "a", "ab", "abc=", "say: "):
        masked = masker.mask(f"{prefix}{encoded} end")
        assert REDACTED in masked, (kind, prefix, masked)
        # What survives around the marker is too short to rebuild the secret from.
        for piece in masked.split(REDACTED):
            assert len(piece.replace(prefix, "").replace(" end", "")) <= 4, (kind, masked)


@pytest.mark.parametrize("kind", sorted(_encoded_forms(ENCODED_SECRET)))
def test_encoded_forms_are_masked_across_chunk_boundaries(kind: str) -> None:
    masker = SecretMasker([ENCODED_SECRET, ENCODED_SECRET + "/"])
    text = "out: " + _encoded_forms(ENCODED_SECRET)[kind] + " done\n"
    expected = masker.mask(text)
    for cut in range(len(text) + 1):
        assert _feed_all(masker, [text[:cut], text[cut:]]) == expected, cut


def test_ordinary_words_survive_a_masker_of_real_secrets() -> None:
    masker = SecretMasker(["sk-ant-api03-abcdefghijklmnop0123456789"])
    text = '{"type":"result","is_error":false,"usage":{"input_tokens":12}}'
    assert masker.mask(text) == text


@pytest.mark.parametrize(
    ("name", "value", "secret"),
    [
        ("ANTHROPIC_API_KEY", "short", True),
        ("GH_TOKEN", "x", True),
        ("db_password", "hunter2", True),
        ("HTTP_AUTH", "basic", True),
        ("AWS_CREDENTIALS", "a", True),
        ("MY_SECRET", "a", True),
        ("VERBOSE", "true", False),
        ("HOME_DIR", "/home/user/projects", False),
        ("UPSTREAM", "sk3Jf9aQ2mZx7LpV0c", True),
        ("GREETING", "hello there general kenobi", False),
    ],
)
def test_forwarded_values_are_secret_by_name_or_entropy(
    name: str, value: str, secret: bool
) -> None:
    assert forwarded_is_secret(name, value) is secret


def test_mask_model_masks_text_but_keeps_numbers_and_hal_vocabulary() -> None:
    from hal9999.events.models import Message, Usage

    masker = SecretMasker(["error", "12052"])
    message = masker.mask_model(Message(level="error", text="an error happened: 12052"))
    assert message.level == "error"  # a closed vocabulary: kept
    assert message.text == f"an {REDACTED} happened: {REDACTED}"
    usage = masker.mask_model(Usage(input_tokens=12052, output_tokens=1, total=True))
    assert usage.input_tokens == 12052


def _claimed_forms(secret: str) -> list[str]:
    """The forms the masker says it finds (the module's docstring)."""
    raw = secret.encode()
    return [
        secret,
        secret[::-1],
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        urllib.parse.quote(secret, safe=""),
        urllib.parse.quote_plus(secret, safe=""),
        urllib.parse.quote(secret, safe="!'()*"),
        raw.hex(),
        raw.hex().upper(),
        base64.b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode(),
    ]


@settings(max_examples=30, deadline=None)
@given(
    secret=st.text(st.characters(codec="utf-8", exclude_characters=SEPARATORS), min_size=8,
                   max_size=24),
    around=st.tuples(st.text(max_size=6), st.text(max_size=6)),
    cuts=st.lists(st.integers(0, 200), max_size=3),
)  # fmt: skip
def test_every_claimed_form_of_any_secret_is_masked_however_split(
    secret: str, around: tuple[str, str], cuts: list[int]
) -> None:
    masker = SecretMasker([secret])
    for form in _claimed_forms(secret):
        text = around[0] + form + around[1]
        masked = masker.mask(text)
        assert form.rstrip("=") not in masked, (form, masked)
        bounds = [0, *sorted(min(cut, len(text)) for cut in cuts), len(text)]
        chunks = [text[a:b] for a, b in itertools.pairwise(bounds)]
        assert _feed_all(masker, chunks) == masked


DUMPED = "Zq9sEcReT4h8LeakVal77xYw"
"""Longer than a dump's 16-byte line, so each dump below wraps it."""


def _od(raw: bytes) -> str:  # od -An -tx1: 16 bytes a line, each " xx"
    return "\n".join("".join(f" {b:02x}" for b in raw[i : i + 16]) for i in range(0, len(raw), 16))


def _xxd_plain(raw: bytes, per_line: int = 8) -> str:  # xxd -p -c8
    text = raw.hex()
    return "\n".join(text[i : i + 2 * per_line] for i in range(0, len(text), 2 * per_line))


@pytest.mark.parametrize(
    "printed",
    [
        _od(DUMPED.encode()),
        _xxd_plain(DUMPED.encode()),
        "\n".join(
            base64.b64encode(DUMPED.encode() + b"\n").decode()[i : i + 10] for i in range(0, 36, 10)
        ),
        repr(DUMPED.encode()),
        f"{DUMPED[:11]}\n{DUMPED[11:]}",
    ],
    ids=["od -An -tx1", "xxd -p", "base64 -w10 of echo", "repr(bytes)", "split at a line break"],
)
def test_the_dumps_docs_say_are_caught_are_masked(printed: str) -> None:
    # docs/security.md, item 10 lists what is caught and what is not (the secret sweep).
    masked = SecretMasker([DUMPED]).mask(printed)
    assert REDACTED in masked
    for piece in (DUMPED[:8], DUMPED[-8:], DUMPED.encode()[:8].hex(), DUMPED.encode()[-8:].hex()):
        assert piece not in masked.replace("\n", "").replace(" ", "")
