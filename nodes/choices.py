"""Combo choices that list a model folder, shared by the node modules."""

from __future__ import annotations

import logging

from .host import get_host

log = logging.getLogger(__name__)


def model_files(folder: str) -> list[str]:
    """The files of model folder ``folder`` as the host lists them; an empty list, logged, when
    the folder cannot be listed (a missing or unreadable folder must not break ``INPUT_TYPES``)."""
    try:
        return get_host().list_files(folder)
    except Exception as exc:  # noqa: BLE001 - any host failure: an empty combo, never a broken node
        log.warning("UNet Lab: cannot list %s: %s", folder, exc)
        return []
