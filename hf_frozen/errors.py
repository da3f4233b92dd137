"""The errors hf-frozen raises for what it reads: one class for an artifact (or a file in it) that cannot be used."""

from __future__ import annotations


class ArtifactError(ValueError):
    """An artifact, or one of its files, is damaged, incomplete, crafted or of another kind. The message names the
    file, says what was found in it and what to do. A `ValueError`, so code that caught those keeps working."""
