"""Compile and load the NMODL mechanisms (12 channels, 2 synapses) without a manual nrnivmodl.

A build lives in `<cache root>/<sha256>[-coreneuron]/`, where the hash covers the .mod
files' names and contents, the NEURON version and the machine architecture. Changing a
.mod file (or upgrading NEURON) therefore gives a new directory and a rebuild; nothing
else does. The cache root is `build/mechanisms/` in the project, or $L5PC_MECHANISMS_CACHE
(an ASCII directory elsewhere when the project's path is not ASCII: see cache_root).

Builds are made in a fresh temporary directory next to their final place and renamed into
it when complete, under a per-build file lock, so that concurrent processes (dask workers,
parallel test sessions) compile at most once and never see a half-written library.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from common.files import check_writable, sha256_hex

from .errors import UserInputError
from .paths import PROJECT_ROOT

MOD_DIR = Path(__file__).resolve().parent / "mechanisms"
DEFAULT_CACHE_ROOT = PROJECT_ROOT / "build" / "mechanisms"
CACHE_ENV = "L5PC_MECHANISMS_CACHE"
BUILD_INFO = "build_info.json"  # written last inside a build; marks it complete

# the build loaded into this process (NEURON cannot unload a mechanism library)
_loaded_build: Path | None = None


class MechanismBuildError(RuntimeError):
    """nrnivmodl is missing or failed; the message ends with the tail of its output."""


class MechanismPathError(UserInputError):
    """No ASCII directory for the mechanism build (NEURON's hoc strings are ASCII)."""


class MechanismLoadError(RuntimeError):
    """A different mechanism library is already loaded into this NEURON process."""


def neuron_version() -> str:
    """The installed NEURON version, read from the package metadata (does not import neuron)."""
    from importlib.metadata import PackageNotFoundError, version

    for name in ("neuron", "NEURON", "neuron-nightly"):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    import neuron  # a source build without package metadata

    return neuron.__version__


def _read_mod_files(mod_dir: Path) -> dict[str, bytes]:
    mod_files = sorted(Path(mod_dir).glob("*.mod"))
    if not mod_files:
        raise MechanismBuildError(f"no .mod files in {mod_dir}")
    return {path.name: path.read_bytes() for path in mod_files}


def _digest(sources: dict[str, bytes]) -> str:
    header = f"neuron {neuron_version()}\narch {platform.machine()}\n".encode()
    # each file as name, length, content (sorted by name): no two source sets give the same stream
    parts = (part for name, content in sources.items() for part in (f"{name}\0{len(content)}\0".encode(), content))
    return sha256_hex([header, *parts])


def mechanisms_sha256(mod_dir: str | os.PathLike | None = None) -> str:
    """Hash of the .mod files (names and contents) and the NEURON version: the build's identity."""
    return _digest(_read_mod_files(Path(mod_dir) if mod_dir else MOD_DIR))


def cache_root(root: str | os.PathLike | None = None) -> Path:
    """Where builds live: `root`, else $L5PC_MECHANISMS_CACHE, else build/mechanisms/ in the project.

    NEURON takes only ASCII paths (hoc strings), so a build under a project whose path is not
    ASCII could never be loaded; the default then moves to ~/.cache/l5pc-surrogate/mechanisms,
    or to the temporary directory, whichever is ASCII. A root given explicitly must be ASCII.
    """
    if root or os.environ.get(CACHE_ENV):
        chosen = Path(root or os.environ[CACHE_ENV])
        if not str(chosen.absolute()).isascii():
            origin = "the mechanisms cache" if root else f"${CACHE_ENV}"
            raise MechanismPathError(f"{origin} {chosen} is not an ASCII path, and NEURON loads libraries only "
                                     f"from ASCII paths: choose another directory")
        return chosen
    for candidate in (DEFAULT_CACHE_ROOT, Path.home() / ".cache" / "l5pc-surrogate" / "mechanisms",
                      Path(tempfile.gettempdir()) / f"l5pc-surrogate-mechanisms-{os.getuid()}"):
        if str(candidate.absolute()).isascii():
            return candidate
    raise MechanismPathError(f"the project's path {PROJECT_ROOT} is not ASCII, and NEURON loads libraries only from "
                             f"ASCII paths: set {CACHE_ENV} to an ASCII directory for the compiled mechanisms")


def build_directory(
    coreneuron: bool = False,
    mod_dir: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
) -> Path:
    """The directory the build for these sources has (or would have), built or not."""
    key = mechanisms_sha256(mod_dir) + ("-coreneuron" if coreneuron else "")
    return cache_root(root) / key


def is_built(build_dir: Path) -> bool:
    return (Path(build_dir) / BUILD_INFO).is_file()


def build_info(build_dir: Path) -> dict:
    """What was recorded at build time: hash, NEURON version, coreneuron, compile seconds."""
    return json.loads((Path(build_dir) / BUILD_INFO).read_text())


def library_path(build_dir: Path) -> Path:
    """The shared library nrnivmodl made (`<arch>/libnrnmech.so`, `.dylib` on macOS)."""
    candidates = sorted(
        p for p in Path(build_dir).glob("*/libnrnmech.*") if p.suffix in (".so", ".dylib", ".dll")
    )
    if not candidates:
        raise MechanismBuildError(f"no libnrnmech library in {build_dir}")
    return candidates[0]


def find_nrnivmodl() -> Path:
    """nrnivmodl next to the running Python (a venv's bin/), else on PATH."""
    beside_python = Path(sys.executable).parent / "nrnivmodl"
    if beside_python.is_file():
        return beside_python
    on_path = shutil.which("nrnivmodl")
    if on_path:
        return Path(on_path)
    raise MechanismBuildError(
        "nrnivmodl not found next to the Python interpreter or on PATH; install NEURON (pip install neuron)"
    )


@contextmanager
def _exclusive_lock(lock_path: Path):
    with open(lock_path, "a") as lock_file:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX)  # released when the file closes
        try:
            yield
        finally:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_UN)


def _output_tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def compile_mechanisms(
    coreneuron: bool = False,
    mod_dir: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
) -> Path:
    """Build the mechanisms (once per source hash) and return the build directory.

    `coreneuron=True` runs `nrnivmodl -coreneuron` into a separate `<hash>-coreneuron` build.
    `mod_dir` and `root` default to simulation/mechanisms/ and the cache root.
    """
    sources = _read_mod_files(Path(mod_dir) if mod_dir else MOD_DIR)
    key = _digest(sources) + ("-coreneuron" if coreneuron else "")
    root = cache_root(root)
    target = root / key
    if is_built(target):
        return target

    check_writable(root)  # a cache root that is a file or read-only: one line, not a traceback
    with _exclusive_lock(root / f".{key}.lock"):
        if is_built(target):  # another process finished it while we waited
            return target
        # under the lock, leftovers of this key are from crashed builds
        for stale in root.glob(f".tmp-{key}-*"):
            shutil.rmtree(stale, ignore_errors=True)
        if target.exists():  # incomplete (no build_info): rebuild it
            shutil.rmtree(target)

        workdir = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=root))
        try:
            # compile the exact bytes that were hashed, from a private copy
            (workdir / "mod").mkdir()
            for name, content in sources.items():
                (workdir / "mod" / name).write_bytes(content)
            nrnivmodl = find_nrnivmodl()
            command = [str(nrnivmodl)] + (["-coreneuron"] if coreneuron else []) + ["mod"]
            env = dict(os.environ)
            env["PATH"] = f"{nrnivmodl.parent}{os.pathsep}{env.get('PATH', '')}"
            started = time.perf_counter()
            completed = subprocess.run(
                command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            seconds = time.perf_counter() - started
            (workdir / "nrnivmodl.log").write_text(completed.stdout)
            if completed.returncode != 0:
                raise MechanismBuildError(
                    f"`{' '.join(command)}` failed with exit code {completed.returncode} "
                    f"(sources: {mod_dir or MOD_DIR}); last lines of its output:\n"
                    + _output_tail(completed.stdout)
                )
            try:
                library_path(workdir)
            except MechanismBuildError:
                raise MechanismBuildError(
                    f"`{' '.join(command)}` made no libnrnmech library; last lines of its output:\n"
                    + _output_tail(completed.stdout)
                ) from None
            info = {
                "sha256": key.removesuffix("-coreneuron"),
                "neuron_version": neuron_version(),
                "coreneuron": coreneuron,
                "mod_files": list(sources),
                "compile_seconds": round(seconds, 2),
            }
            (workdir / BUILD_INFO).write_text(json.dumps(info, indent=2) + "\n")
            workdir.chmod(0o755)  # mkdtemp makes it private; a build cache is for every reader
            os.rename(workdir, target)  # atomic: readers see no build or a whole one
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
    return target


def load_mechanisms(
    coreneuron: bool = False,
    mod_dir: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
) -> Path:
    """Compile if needed, then load the library into this process once; returns the build directory.

    Calling it again with the same sources is a no-op. A NEURON process can hold only one
    library, so asking for a different build afterwards raises MechanismLoadError.
    """
    global _loaded_build
    if _loaded_build is not None:
        sha = mechanisms_sha256(mod_dir)
        # same sources -> same library; a -coreneuron build also serves plain NEURON runs
        usable = {sha + "-coreneuron"} if coreneuron else {sha, sha + "-coreneuron"}
        if _loaded_build.name in usable:
            return _loaded_build
        raise MechanismLoadError(
            f"this process already loaded mechanisms from {_loaded_build}; cannot also load the "
            f"build {sha}{'-coreneuron' if coreneuron else ''} (NEURON holds one mechanism library "
            f"per process: start a new process)"
        )
    build_dir = compile_mechanisms(coreneuron=coreneuron, mod_dir=mod_dir, root=root)

    from neuron import h

    if hasattr(h, "AmpaNmda"):
        raise MechanismLoadError(
            "mechanisms named like ours (AmpaNmda) are already in this NEURON process, loaded "
            "by something else (an x86_64/ build in the working directory, or `special`); "
            "remove it and let simulation.mechanisms.load_mechanisms() load the cached build"
        )
    library = library_path(build_dir)
    if not h.nrn_load_dll(str(library)):
        raise MechanismLoadError(f"NEURON could not load {library}")
    if coreneuron:
        # CoreNEURON's in-memory mode looks for its mechanism library here, else only in
        # ./<arch>/ and then falls back to NEURON's built-in mechanisms
        os.environ["CORENEURONLIB"] = str(library.parent / library.name.replace("libnrnmech", "libcorenrnmech"))
    _loaded_build = build_dir
    return build_dir


def loaded_build() -> Path | None:
    """The build directory loaded into this process, or None."""
    return _loaded_build
