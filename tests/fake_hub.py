"""A stand-in for the Hub's servers, the one thing the tests fake: records repos and serves uploaded files."""

import shutil


class FakeHub:
    """Stands in for the Hub's servers (the only thing mocked): records repos and serves uploaded files."""

    def __init__(self, root):
        self.root = root
        self.created = []

    def api(self, token=None):
        hub = self

        class Api:
            def create_repo(self, repo_id, private=None, exist_ok=False, repo_type=None):
                hub.created.append((repo_id, private))

            def upload_folder(self, repo_id, folder_path, commit_message, revision=None):
                shutil.copytree(folder_path, hub.root / repo_id, dirs_exist_ok=True)
                return f"https://huggingface.co/{repo_id}/commit/0"

        return Api()

    def download(self, repo_id, filename, revision=None, token=None):
        path = self.root / repo_id / filename
        if not path.is_file():
            from huggingface_hub.errors import EntryNotFoundError

            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(path)

    def snapshot(self, repo_id, revision=None, token=None):
        """`snapshot_download`: the whole repo as a local folder."""
        path = self.root / repo_id
        if not path.is_dir():
            from huggingface_hub.errors import RepositoryNotFoundError

            raise RepositoryNotFoundError(f"{repo_id} not found")
        return str(path)
