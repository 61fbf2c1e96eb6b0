"""The OpenAPI of a deployment names what this deployment offers, so that a request the server
would refuse with a 422 for it is outside the schema: its models (``model``: ``auto`` or a name of
GET /v1/models, read when the schema is first served) and its DICOM peers (P2SAM_DICOM_PEERS: a
``peer`` or ``destinations`` entry; a PACS reference must name its peer when no
P2SAM_DICOM_PULL_SOURCE is set)."""

from __future__ import annotations

import logging
from typing import Any

from .schemas import _given

log = logging.getLogger("p2sam.service")


def describe_deployment(spec: dict[str, Any], services) -> None:
    """Narrow ``spec`` (FastAPI's OpenAPI dict, changed in place) to this deployment."""
    schemas = spec.get("components", {}).get("schemas", {})
    models = ["auto", *sorted(services.model_files())]
    for schema in schemas.values():
        if "model" in schema.get("properties", {}) and "pattern" in schema["properties"]["model"]:  # request bodies
            schema["properties"]["model"]["enum"] = models
    _describe_peers(schemas, services.settings)


def _describe_peers(schemas: dict[str, Any], settings) -> None:
    from dicomnet.peers import PeerError, peers_of
    from dicomnet.pull import default_peer

    try:
        names = sorted(peers_of(settings))
    except PeerError as exc:  # a broken P2SAM_DICOM_PEERS: /readyz and the jobs say so; the schema stays general
        log.warning("OpenAPI: P2SAM_DICOM_PEERS not readable (%s); peers are not listed", exc)
        return
    for model in ("PriorIn", "TargetIn"):
        schema = schemas.get(model)
        if not schema or "peer" not in schema.get("properties", {}):
            continue
        schema["properties"]["peer"]["enum"] = [*names, None]
        if default_peer(settings) not in names:  # no default PACS: a reference on a PACS names its peer
            schema["anyOf"][1].setdefault("allOf", []).extend(_given("peer"))
    for model in ("JobIn", "DeliveriesIn"):
        field = schemas.get(model, {}).get("properties", {}).get("destinations")
        if field is not None:
            if names:
                field["items"] = {**field.get("items", {}), "enum": names}
            else:
                field["maxItems"] = 0
