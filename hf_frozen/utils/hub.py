"""Where artifacts live: local folders or Hugging Face Hub repositories.

`resolve_file` turns a folder or Hub repo id plus a file name into a local path; `HubMixin.push_to_hub`
saves an artifact to a temporary folder, adds a model card and uploads the folder in one commit.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from typing import Any

from huggingface_hub import HfApi, ModelCard, ModelCardData, hf_hub_download
from huggingface_hub.errors import EntryNotFoundError, HFValidationError, RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id

from ..errors import ArtifactError


def resolve_file(
    path_or_repo_id: str | os.PathLike, filename: str, revision: str | None = None, token: str | bool | None = None
) -> str:
    """Local path of `filename` inside a local folder, or inside a Hub repository (downloaded and cached)."""
    path_or_repo_id = os.fspath(path_or_repo_id)
    if os.path.isdir(path_or_repo_id):
        path = os.path.join(path_or_repo_id, filename)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path_or_repo_id} has no {filename}: it is not an hf-frozen artifact, or it is incomplete "
                "(save it with `save_pretrained`)."
            )
        check_inside(path_or_repo_id, path)
        return path
    try:
        return hf_hub_download(path_or_repo_id, filename, revision=revision, token=token)
    except HFValidationError as err:
        raise FileNotFoundError(
            f"{path_or_repo_id!r} is neither a local folder nor a valid Hub repo id ({err})."
        ) from err
    except (EntryNotFoundError, RepositoryNotFoundError) as err:
        raise FileNotFoundError(
            f"Could not find {filename} in the Hub repo {path_or_repo_id!r} (revision {revision or 'main'}): {err}"
        ) from err


def check_inside(folder: str, path: str) -> None:
    """Refuse a file of an artifact folder that is a link to somewhere outside it: loading reads inside the folder
    only. Links of a Hub cache snapshot (`<repo>/snapshots/<revision>/[<subfolder>/]<file>` -> `<repo>/blobs/<hash>`)
    are the cache's own and are followed."""
    real_folder = os.path.realpath(folder)
    allowed = [real_folder]
    parts = real_folder.split(os.sep)
    if "snapshots" in parts[:-1]:  # the folder is a snapshot, or a folder inside one (a task of a set)
        repo = os.sep.join(parts[: len(parts) - 1 - parts[::-1].index("snapshots")])
        allowed.append(os.path.join(repo, "blobs"))
    real = os.path.realpath(path)
    if not any(os.path.commonpath([real, root]) == root for root in allowed):
        raise ArtifactError(
            f"{path} is a link to {real}, outside the artifact folder {folder}: an artifact is read from its own "
            "folder only. Copy the file into the folder if you trust it."
        )


@contextlib.contextmanager
def loading_recorded_base(
    name: str, artifact: Any, what: str = "base model", argument: str = "base_model"
) -> Iterator[None]:
    """Name the artifact when the base model (or other `what`) it records cannot be loaded (a damaged name, no
    network, no such folder): the user did not choose that name, so the error says where it came from and how to
    choose (`argument`)."""
    try:
        yield
    except Exception as err:  # noqa: BLE001 - transformers raises many kinds for a name it cannot load
        raise ArtifactError(
            f"The {what} {name!r} that {artifact} records could not be loaded ({type(err).__name__}: "
            f"{str(err)[:300]}). Pass `{argument}=` yourself: a model, or an id or folder you trust."
        ) from err


def hub_id(name: str | None) -> str | None:
    """`name` if it names a Hub repository, `None` for a local path (which means nothing to readers of a card)."""
    if not name or os.path.exists(name):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


def build_model_card(base_model: str | None, tags: list[str], pipeline_tag: str, body: str) -> str:
    """A model card through `huggingface_hub`: library `hf-frozen`, the base model only when it is a Hub id."""
    data = ModelCardData(library_name="hf-frozen", base_model=hub_id(base_model), tags=["hf-frozen", *tags],
                         pipeline_tag=pipeline_tag)  # fmt: skip
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n"))


class HubMixin:
    """`push_to_hub` for any artifact class that defines `save_pretrained(folder)` and `model_card(repo_id)`."""

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs: Any) -> None:
        raise NotImplementedError

    def model_card(self, repo_id: str | None = None) -> str:
        raise NotImplementedError

    def push_to_hub(
        self,
        repo_id: str,
        private: bool | None = None,
        token: str | bool | None = None,
        commit_message: str = "Upload hf-frozen artifact",
        revision: str | None = None,
    ) -> str:
        """Save the artifact with a model card and upload it to `repo_id` (created if needed) in one commit.

        Returns:
            `str`: the URL of the commit.
        """
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder)
            with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as f:
                f.write(self.model_card(repo_id))
            commit = api.upload_folder(
                repo_id=repo_id, folder_path=folder, commit_message=commit_message, revision=revision
            )
        return str(getattr(commit, "commit_url", commit))
