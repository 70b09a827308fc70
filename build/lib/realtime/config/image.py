"""The `WORKSPACE_IMAGE` setting's rule: a Docker/OCI image reference, split into its parts.

Pure: `parse_image_reference` accepts exactly what `docker pull` accepts (the grammar below) and
raises `ValueError` saying what is wrong with anything else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ImageReference", "parse_image_reference"]

# The grammar of github.com/distribution/reference (what `docker pull` accepts):
#   reference  := name [ ":" tag ] [ "@" digest ]
#   name       := [domain "/"] path-component ["/" path-component]*
#   domain     := host [":" port];  host := domain-name | "[" IPv6 "]"
#   domain-component := /([a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])/
#   path-component   := /[a-z0-9]+/ (separator /[a-z0-9]+/)*;  separator := /[_.]|__|[-]+/
#   tag        := /[\w][\w.-]{0,127}/
#   digest     := algorithm ":" hex (sha256: 64 lowercase hex digits, as go-digest validates)
# The first component is a domain only if it has a "." or ":", is "localhost", or has an upper-case letter.

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[a-fA-F0-9:]+\])(?::[0-9]+)?")
_PATH_COMPONENT = re.compile(r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGEST = re.compile(r"([A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*):([0-9a-fA-F]{32,})")
_DIGEST_HEX = {"sha256": 64, "sha384": 96, "sha512": 128}
_NAME_MAX = 255


@dataclass(frozen=True, slots=True)
class ImageReference:
    """`[domain/]path[:tag][@digest]`; `domain` None means Docker Hub."""

    domain: str | None
    path: str
    tag: str | None
    digest: str | None


def parse_image_reference(ref: str) -> ImageReference:
    """Split a Docker/OCI image reference; ValueError says what is wrong with a malformed one."""
    if not ref:
        raise ValueError("empty image reference")
    if ref != ref.strip() or any(c.isspace() for c in ref):
        raise ValueError("whitespace in image reference")
    if re.fullmatch(r"[a-f0-9]{64}", ref):
        raise ValueError("a bare 64-hex-digit string is an image ID, not a reference")
    remainder, at, digest = ref.partition("@")
    if at:
        m = _DIGEST.fullmatch(digest)
        if not m:
            raise ValueError(f"malformed digest {digest!r} (want algorithm:hex, e.g. sha256:<64 hex digits>)")
        algorithm, hexpart = m.groups()
        if algorithm not in _DIGEST_HEX:
            raise ValueError(f"unsupported digest algorithm {algorithm!r}")
        if len(hexpart) != _DIGEST_HEX[algorithm] or not re.fullmatch(r"[a-f0-9]+", hexpart):
            raise ValueError(f"{algorithm} digest must be {_DIGEST_HEX[algorithm]} lowercase hex digits")
    name, tag = remainder, None
    colon = remainder.rfind(":")
    if colon > remainder.rfind("/"):
        name, tag = remainder[:colon], remainder[colon + 1 :]
        if not tag:
            raise ValueError("empty tag after ':'")
        if not _TAG.fullmatch(tag):
            raise ValueError(f"malformed tag {tag!r} (letters, digits, _ . -; not starting with . or -; ≤128)")
    if not name:
        raise ValueError("missing repository name")
    if len(name) > _NAME_MAX:
        raise ValueError(f"repository name longer than {_NAME_MAX} characters")
    first, slash, rest = name.partition("/")
    domain: str | None = None
    path = name
    if slash and (any(c in first for c in ".:") or first == "localhost" or first.lower() != first):
        domain, path = first, rest
        if not _DOMAIN.fullmatch(domain):
            raise ValueError(f"malformed registry host {domain!r}")
    for component in path.split("/"):
        if _PATH_COMPONENT.fullmatch(component):
            continue
        if _PATH_COMPONENT.fullmatch(component.lower()):
            raise ValueError(f"repository name must be lowercase, got {component!r}")
        raise ValueError(f"malformed repository path component {component!r}")
    return ImageReference(domain=domain, path=path, tag=tag, digest=digest if at else None)
