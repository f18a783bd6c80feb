"""code.zip: the tracked source of the repository (git ls-files; outside git, source files by
extension), never data, checkpoints, results or binaries, byte-identical for the same code."""
import subprocess
import zipfile
from pathlib import Path

from utils.io import _atomic_write

EXCLUDED_DIRS = ("data", "checkpoints", "results", "plots", ".git", "__pycache__", ".venv", "venv", "env",
                 ".pytest_cache")
EXCLUDED_SUFFIXES = (".pt", ".pth", ".ckpt", ".npz", ".npy", ".tar", ".gz", ".zip", ".pdf", ".png", ".pyc")
SOURCE_PATTERNS = ("*.py", "*.md", "*.txt", "*.ini", "*.cfg", "*.toml", "*.yml", "*.yaml", "*.json", "*.csv",
                   "*.sh", ".gitignore", ".ci/*")


def source_files(repo):
    """Tracked files (git ls-files) or, outside git, files matching SOURCE_PATTERNS; never data,
    checkpoints, results or binaries."""
    repo = Path(repo)
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True)
        names = [n for n in out.stdout.decode().split("\0") if n]
        in_git = True
    except (OSError, subprocess.CalledProcessError):
        in_git = False
    if not in_git:
        names = sorted({p.relative_to(repo).as_posix() for pat in SOURCE_PATTERNS for p in repo.rglob(pat)
                        if p.is_file()})

    def keep(name):
        parts = name.split("/")
        if parts[0] in EXCLUDED_DIRS or any(p in ("__pycache__", ".git") for p in parts):
            return False
        return not name.endswith(EXCLUDED_SUFFIXES) and (repo / name).is_file()
    return sorted(n for n in names if keep(n))


def write_code_zip(repo, zip_path):
    """Zip the source files (paths relative to the repo root); return the member names."""
    repo = Path(repo).resolve()
    names = source_files(repo)

    def write(f):
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
            for n in names:
                info = zipfile.ZipInfo(n, date_time=(2020, 1, 1, 0, 0, 0))  # same code, same zip
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = ((repo / n).stat().st_mode & 0o777 | 0o100000) << 16
                z.writestr(info, (repo / n).read_bytes())
    _atomic_write(zip_path, write)
    return names
