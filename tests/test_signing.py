"""Preview URL signing: labels, host parsing and verification (pure, no event loop)."""

from __future__ import annotations

import re

import pytest

from realtime.core.signing import ParsedLabel, PreviewSigner, VerifyResult, slugify

KEY = b"preview-test-key"
TEMPLATE = "http://{slug}.preview.localhost:8000"
PROJECT = "Demo_Project"
EXPIRES = 1_900_000_000
ALPHABET = "abcdefghijklmnopqrstuvwxyz234567"
TOKEN_CHARS = 33


@pytest.fixture
def signer() -> PreviewSigner:
    return PreviewSigner(KEY, TEMPLATE)


def host_of(signer: PreviewSigner, project_id: str = PROJECT, generation: int = 1, expires_at: int = EXPIRES) -> str:
    return f"{signer.label(project_id, generation, expires_at)}.preview.localhost:8000"


def parse(signer: PreviewSigner, host: str) -> ParsedLabel:
    parsed = signer.parse_host(host)
    assert parsed is not None, host
    return parsed


def test_signed_label_round_trips(signer: PreviewSigner) -> None:
    """A freshly signed host parses back to the project's key and expiry and verifies as ok."""
    parsed = parse(signer, host_of(signer))
    assert parsed.project_key == signer.project_key(PROJECT)
    assert parsed.expires_at == EXPIRES
    assert parsed.slug == "demo-project"
    assert signer.verify(parsed, PROJECT, 1, now=EXPIRES - 1) is VerifyResult.ok


def test_url_fills_the_template_with_a_trailing_slash(signer: PreviewSigner) -> None:
    """url() is the template with the label in place of {slug}, ending in "/"."""
    label = signer.label(PROJECT, 1, EXPIRES)
    assert signer.url(PROJECT, 1, EXPIRES) == f"http://{label}.preview.localhost:8000/"
    https = PreviewSigner(KEY, "https://{slug}.preview.example.com/")
    assert https.url(PROJECT, 1, EXPIRES) == f"https://{label}.preview.example.com/"


@pytest.mark.parametrize(
    "project_id",
    ["a" * 64, "Under_Scores_AND_Caps", "A" + "_" * 63, "0", "x-_-y", "-_-_-", "Z" * 20 + "-tail", "p_" * 32],
)
def test_label_is_a_short_lowercase_dns_label(signer: PreviewSigner, project_id: str) -> None:
    """Any valid project id yields a lowercase label of at most 63 characters that survives case changes."""
    label = signer.label(project_id, 7, EXPIRES)
    assert len(label) <= 63
    assert re.fullmatch(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?", label), label
    assert "--" not in label[:-TOKEN_CHARS]
    for host in (f"{label}.preview.localhost", f"{label.upper()}.PREVIEW.LOCALHOST:8000"):
        assert signer.verify(parse(signer, host), project_id, 7, now=0) is VerifyResult.ok


@pytest.mark.parametrize(
    ("project_id", "slug"),
    [
        ("Demo_Project", "demo-project"),
        ("__", "p"),
        ("a--b__c-", "a-b-c"),
        ("x" * 30, "x" * 20),
        ("a" * 19 + "_b", "a" * 19),
    ],
)
def test_slug_is_a_readable_prefix(project_id: str, slug: str) -> None:
    """The slug lowercases, maps "_" to "-", collapses hyphens, trims to 20 and is never empty."""
    assert slugify(project_id) == slug


def test_project_key_is_stable_and_keyed(signer: PreviewSigner) -> None:
    """The project key is 10 base32 characters, the same every time, and differs per project and per key."""
    key = signer.project_key(PROJECT)
    assert re.fullmatch(r"[a-z2-7]{10}", key)
    assert key == PreviewSigner(KEY, "https://{slug}.p.example.com").project_key(PROJECT)
    assert key != signer.project_key("other")
    assert key != PreviewSigner(b"another key", TEMPLATE).project_key(PROJECT)


@pytest.mark.parametrize("position", range(TOKEN_CHARS))
def test_changing_any_token_character_fails(signer: PreviewSigner, position: int) -> None:
    """Changing one character of the project key, expiry or mac never verifies."""
    label = signer.label(PROJECT, 1, EXPIRES)
    index = len(label) - TOKEN_CHARS + position
    for replacement in ALPHABET.replace(label[index], ""):
        tampered = label[:index] + replacement + label[index + 1 :]
        parsed = signer.parse_host(f"{tampered}.preview.localhost")
        assert parsed is None or signer.verify(parsed, PROJECT, 1, now=0) is VerifyResult.bad_signature


def test_changing_the_slug_fails(signer: PreviewSigner) -> None:
    """A label whose slug was swapped for another does not verify, so each URL has one spelling."""
    label = signer.label(PROJECT, 1, EXPIRES)
    parsed = parse(signer, "other" + label[len("demo-project") :] + ".preview.localhost")
    assert signer.verify(parsed, PROJECT, 1, now=0) is VerifyResult.bad_signature


def test_expired_label_fails_from_its_expiry_on(signer: PreviewSigner) -> None:
    """A genuine label is ok until its expiry second and expired from then on."""
    parsed = parse(signer, host_of(signer))
    assert signer.verify(parsed, PROJECT, 1, now=EXPIRES - 0.5) is VerifyResult.ok
    assert signer.verify(parsed, PROJECT, 1, now=EXPIRES) is VerifyResult.expired
    assert signer.verify(parsed, PROJECT, 1, now=EXPIRES + 3600) is VerifyResult.expired


def test_bumped_generation_revokes_earlier_labels(signer: PreviewSigner) -> None:
    """A label signed for generation 1 fails once the project is at generation 2, even if expired too."""
    parsed = parse(signer, host_of(signer, generation=1))
    assert signer.verify(parsed, PROJECT, 2, now=0) is VerifyResult.bad_signature
    assert signer.verify(parsed, PROJECT, 2, now=EXPIRES + 1) is VerifyResult.bad_signature


def test_label_from_another_key_or_project_fails(signer: PreviewSigner) -> None:
    """A label signed with another key, or checked against another project, is a bad signature."""
    other = PreviewSigner(b"another key", TEMPLATE)
    assert signer.verify(parse(signer, host_of(other)), PROJECT, 1, now=0) is VerifyResult.bad_signature
    assert signer.verify(parse(signer, host_of(signer)), "Demo-Project", 1, now=0) is VerifyResult.bad_signature


@pytest.mark.parametrize("expires_at", [0, 1, 2**32 - 1])
def test_expiry_survives_its_whole_range(signer: PreviewSigner, expires_at: int) -> None:
    """Every 32-bit expiry encodes into the label and parses back unchanged."""
    assert parse(signer, host_of(signer, expires_at=expires_at)).expires_at == expires_at


@pytest.mark.parametrize("expires_at", [-1, 2**32])
def test_expiry_outside_32_bits_is_rejected(signer: PreviewSigner, expires_at: int) -> None:
    """label() refuses an expiry that does not fit in 32 unsigned bits."""
    with pytest.raises(ValueError, match="expires_at"):
        signer.label(PROJECT, 1, expires_at)


@pytest.mark.parametrize("suffix", ["", ":8000", ":9999", ".", ".:8000"])
def test_parse_host_ignores_port_and_trailing_dot(signer: PreviewSigner, suffix: str) -> None:
    """The Host may carry any port or none, and a trailing dot."""
    label = signer.label(PROJECT, 1, EXPIRES)
    assert signer.parse_host(f"{label}.preview.localhost{suffix}") == parse(signer, host_of(signer))


@pytest.mark.parametrize(
    "host",
    [
        "{label}.preview.example.com",
        "{label}.localhost:8000",
        "{label}.other.preview.localhost",
        "x.{label}.preview.localhost",
        "preview.localhost:8000",
        "localhost:8000",
        "demo-project.preview.localhost",
        "demo-project-abc.preview.localhost",
        "{label}x.preview.localhost",
        "{label}.preview.localhost:80a",
        "[::1]:8000",
        "",
    ],
)
def test_parse_host_rejects_other_hosts(signer: PreviewSigner, host: str) -> None:
    """Hosts with another suffix, extra labels, a malformed label or port are not preview hosts."""
    host = host.format(label=signer.label(PROJECT, 1, EXPIRES))
    assert signer.parse_host(host) is None
    assert not signer.is_preview_host(host)


def test_template_may_put_the_label_after_a_prefix() -> None:
    """{slug} may be any whole label as long as a domain follows it."""
    signer = PreviewSigner(KEY, "https://app.{slug}.preview.example.com")
    label = signer.label(PROJECT, 1, EXPIRES)
    assert signer.url(PROJECT, 1, EXPIRES) == f"https://app.{label}.preview.example.com/"
    assert signer.is_preview_host(f"APP.{label}.preview.example.com")
    assert not signer.is_preview_host(f"{label}.preview.example.com")
    assert signer.scheme == "https"


@pytest.mark.parametrize(
    "template",
    [
        "http://preview.localhost:8000",
        "http://{slug}.{slug}.localhost",
        "http://x{slug}.preview.localhost",
        "http://{slug}-x.preview.localhost",
        "http://{slug}",
        "http://{slug}:8000",
        "http://preview.localhost/{slug}",
        "http://{slug}.preview.localhost/app",
        "http://{slug}.preview.localhost?x=1",
        "http://user@{slug}.preview.localhost",
        "http://{slug}.preview.localhost:port",
        "http://{slug}..localhost",
        "ftp://{slug}.preview.localhost",
        "{slug}.preview.localhost",
    ],
)
def test_bad_templates_are_rejected(template: str) -> None:
    """A template without exactly one whole-label {slug} before a domain, or not a bare http(s) origin, fails."""
    with pytest.raises(ValueError, match=r"template|slug"):
        PreviewSigner(KEY, template)


def test_empty_key_is_rejected() -> None:
    """An empty signing key is refused at construction."""
    with pytest.raises(ValueError, match="key"):
        PreviewSigner(b"", TEMPLATE)
