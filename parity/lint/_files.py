"""Reading sources safely, walking directories, and the public ``lint_*`` entry points."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import gc
import os
import stat
import sys
import tokenize
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path

from parity.lint._analyzer import ModuleAnalyzer
from parity.lint._config import LintConfig, load_config
from parity.lint._findings import Finding, selected
from parity.lint._noqa import without_suppressed
from parity.lint._parallel import run_checks, worker_count
from parity.lint._project import ProjectIndex
from parity.lint._roots import ProjectRoot, project_files, roots_of
from parity.lint._rules import functional_mode_findings

STDIN = "-"  # the path that reads the source from standard input
STDIN_NAME = "<stdin>"  # how findings from standard input name their file


class UnreadableSource(Exception):
    """A file that cannot be read as Python source; the message says why (MODE000)."""


def read_source(path: str | os.PathLike[str]) -> str:
    """The text of a Python file, decoded as its coding cookie says.

    Raises :class:`UnreadableSource` for a missing file or dangling link, anything that is
    not a regular file (a FIFO would block), a permission error or an undecodable file.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        what = "dangling symbolic link" if os.path.islink(path) else "no such file"
        raise UnreadableSource(f"could not read file: {what}") from None
    except OSError as exc:
        raise UnreadableSource(f"could not read file: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise UnreadableSource("could not read file: not a regular file (a FIFO, device or socket)")
    try:
        with tokenize.open(path) as handle:
            return handle.read()
    except (SyntaxError, UnicodeDecodeError) as exc:
        raise UnreadableSource(f"could not decode file: {exc}") from None
    except OSError as exc:
        raise UnreadableSource(f"could not read file: {exc.strerror or exc}") from None


def parse_source(source: str, path: str) -> ast.Module | Finding:
    """The module's syntax tree, or the MODE000 finding that says why it has none."""
    try:
        return ast.parse(source, filename=path)
    except SyntaxError as exc:
        line, col = exc.lineno or 1, exc.offset or 1
        return Finding(path, line, max(col, 1), "MODE000", f"syntax error: {exc.msg}")
    except ValueError as exc:  # NUL bytes: a binary file
        return Finding(path, 1, 1, "MODE000", f"not Python source: {exc}")
    except (RecursionError, MemoryError):
        return Finding(path, 1, 1, "MODE000", "could not parse: the code is nested too deeply")


def analyse_tree(tree: ast.Module, path: str, project: ProjectIndex | None = None) -> list[Finding]:
    """MODE001/MODE002/MODE009 from the interpreter and MODE003 from the syntactic scan."""
    try:
        findings = ModuleAnalyzer(tree, path, project).analyse()
    except RecursionError:  # outside the per-entry guard (e.g. while indexing a deep tree)
        findings = [Finding(path, 1, 1, "MODE009", "analysis incomplete: nesting too deep")]
    except Exception as exc:  # a checker bug must not abort the run or pass the file as clean
        message = f"analysis incomplete: internal error {type(exc).__name__}: {exc}"
        findings = [Finding(path, 1, 1, "MODE009", message)]
    return sorted(findings + functional_mode_findings(tree, path))


def load_tree(path: str) -> ast.Module | None:
    """A project module's tree, or None when it cannot be read or parsed (it gets its own MODE000)."""
    try:
        return ast.parse(read_source(path), filename=path)
    except (UnreadableSource, SyntaxError, ValueError, RecursionError, MemoryError):
        return None


def lint_source(source: str, path: str = "<string>", select: Sequence[str] | None = None) -> list[Finding]:
    """Check one module's source text; ``select`` keeps only codes with those prefixes.

    A syntax error gives a single ``MODE000`` finding.  ``# noqa`` / ``# noqa: MODE001``
    on the reported line suppresses a finding (never MODE000 or MODE009).
    """
    source = source.removeprefix("\ufeff")  # a byte-order mark read through standard input
    tree = parse_source(source, path)
    if isinstance(tree, Finding):
        return [tree]
    findings = [finding for finding in analyse_tree(tree, path) if selected(finding.code, select)]
    return without_suppressed(findings, source)


def lint_file(path: str | os.PathLike[str], select: Sequence[str] | None = None) -> list[Finding]:
    """Check one file; ``-`` reads standard input.  A file that cannot be read is MODE000."""
    name = str(path)
    if name == STDIN:
        return lint_source(sys.stdin.read(), STDIN_NAME, select)
    try:
        source = read_source(path)
    except UnreadableSource as exc:
        return [Finding(name, 1, 1, "MODE000", str(exc))]
    return lint_source(source, name, select)


def iter_python_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[Path]:
    """Files given, and ``*.py`` under directories given, in a deterministic order.

    Directories are walked recursively in sorted order, skipping hidden directories and
    ``__pycache__``; symbolic links to directories are not followed.  ``-`` (standard
    input) is passed through.  Raises ``FileNotFoundError`` for a path that does not exist.
    """
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if str(raw) == STDIN:
            candidates = [path]
        elif path.is_dir():
            candidates = _walk(path)
        elif path.exists() or path.is_symlink():
            candidates = [path]
        else:
            raise FileNotFoundError(str(raw))
        for file in candidates:
            if file not in seen:
                seen.add(file)
                yield file


def _walk(root: Path) -> list[Path]:
    found = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(name for name in dirs if not name.startswith(".") and name != "__pycache__")
        found.extend(Path(folder) / name for name in sorted(files) if name.endswith(".py"))
    return sorted(found, key=lambda file: file.relative_to(root).parts)


def _files_with_roots(paths: Iterable[str | os.PathLike[str]]) -> list[tuple[Path, Path | None]]:
    """Each file to check with the directory it was found under (None for a file given by name)."""
    out: list[tuple[Path, Path | None]] = []
    for raw in paths:
        root = Path(raw) if str(raw) != STDIN and Path(raw).is_dir() else None
        out.extend((file, root) for file in iter_python_files([raw]))
    seen: set[Path] = set()
    return [(file, root) for file, root in out if not (file in seen or seen.add(file))]


def _lint_in_project(
    file: Path, select: Sequence[str] | None, project: ProjectIndex, sources: dict[str, str]
) -> list[Finding]:
    """Check one file of the project (``-``: standard input); remembers its source for ``# noqa``."""
    name = str(file)
    try:
        source = sys.stdin.read() if name == STDIN else read_source(file)
    except UnreadableSource as exc:
        return [Finding(name, 1, 1, "MODE000", str(exc))]
    name = STDIN_NAME if name == STDIN else name
    source = source.removeprefix("\ufeff")
    sources[name] = source
    if name == STDIN_NAME:
        tree = parse_source(source, name)
    else:
        tree = project.checked_tree(name, lambda: parse_source(source, name))
    if isinstance(tree, Finding):
        return [tree]
    findings = [
        finding for finding in _analyse_variants(tree, name, project) if selected(finding.code, select)
    ]
    return [finding for finding in findings if not _noqa_in_file(finding, sources)]


def _analyse_variants(tree: ast.Module, name: str, project: ProjectIndex) -> list[Finding]:
    """Analyse a file; where an import of it stays ambiguous (two copies of one module path),
    analyse it once per candidate and report each finding once, with a note naming them."""
    project.met.clear()
    findings = analyse_tree(tree, name, project)
    met = sorted(project.met, key=str)
    if not met or not project.steps_seen_last:  # no training step reached: nothing to report
        return findings
    width = max(len(project.ambiguous[key]) for key in met)
    for variant in range(1, width):
        project.set_variant(variant)
        try:
            findings += analyse_tree(tree, name, project)
        finally:
            project.set_variant(0)
    note = "; ".join(
        f"`{module}` is ambiguous: {', '.join(project.ambiguous[(module, folder)])}" for module, folder in met
    )
    unique: dict[tuple[str, int, int, str], Finding] = {}
    for finding in findings:
        if finding.code == "MODE001":
            finding = dataclasses.replace(
                finding, message=f"{finding.message} (import {note}; each was analysed)"
            )
        unique.setdefault((finding.path, finding.line, finding.col, finding.code), finding)
    return sorted(unique.values())


def _noqa_in_file(finding: Finding, sources: dict[str, str]) -> bool:
    """``# noqa`` read from the file the finding is in (an eval site may be in another file)."""
    if finding.path not in sources:
        try:
            sources[finding.path] = read_source(finding.path)
        except UnreadableSource:
            sources[finding.path] = ""
    return not without_suppressed([finding], sources[finding.path])


def project_roots(paths: Iterable[str | os.PathLike[str]]) -> list[ProjectRoot]:
    """The project roots of the files ``paths`` name (see :mod:`parity.lint._roots`), in order;
    paths that do not exist are skipped."""
    existing = [raw for raw in paths if str(raw) == STDIN or os.path.lexists(raw)]
    files = [file for file in iter_python_files(existing) if str(file) != STDIN]
    found = [root for root in roots_of(files).values() if root is not None]
    return list({str(root.folder): root for root in found}.values())


def _indexed_files(roots: Iterable[ProjectRoot | None]) -> list[tuple[Path, Path]]:
    """(file, project root) for every module below the project roots of the files checked."""
    out: list[tuple[Path, Path]] = []
    seen: set[Path] = set()
    for root in roots:
        if root is not None and root.folder not in seen:
            seen.add(root.folder)
            out.extend((file, root.folder) for file in project_files(root.folder))
    return out


def lint_paths(
    paths: Iterable[str | os.PathLike[str]],
    select: Sequence[str] | None = None,
    use_config: bool = True,
    jobs: int = 1,
) -> list[Finding]:
    """Check files and directory trees as one project; findings grouped per file in walk order.

    Imports between the files given, and into the other modules of their project roots, are
    followed (see :mod:`parity.lint._project` and :mod:`parity.lint._roots`); a finding reached
    from several files is reported once, in the file where its eval call is.  A path that does
    not exist is a MODE000 finding; the other paths are still checked.  ``use_config`` reads
    ``[tool.parity.lint]`` from each project root's ``pyproject.toml`` (``select`` given here
    replaces the configured one).  ``jobs`` > 1 checks the files in that many forked worker
    processes (see :mod:`parity.lint._parallel`); the findings are the same as with 1.
    """
    paths = list(paths)
    missing = [str(raw) for raw in paths if str(raw) != STDIN and not os.path.lexists(raw)]
    freeze = not gc.get_freeze_count()  # see _frozen_between_files
    entries, roots, configs, project = _project_for(paths, use_config, freeze)
    sources: dict[str, str] = {}
    found: dict[tuple[str, int, int, str], Finding] = {}
    for raw in missing:
        found[(raw, 1, 1, "MODE000")] = Finding(
            raw, 1, 1, "MODE000", "could not read file: no such file or directory"
        )

    def check(index: int) -> list[Finding]:
        file = entries[index][0]
        return _lint_entry(
            file, select, configs.get(_root_key(roots.get(file)), LintConfig()), project, sources
        )

    workers = 1 if any(str(file) == STDIN for file, _ in entries) else worker_count(jobs, len(entries))
    with _frozen_between_files(freeze) as file_done:
        if workers > 1:  # parsed once here, shared by the forked workers
            _parse_checked(entries, project, freeze)
        for findings in run_checks(len(entries), check, file_done, workers):  # in the serial order
            for finding in findings:  # a finding reached from several files: the first file's
                found.setdefault((finding.path, finding.line, finding.col, finding.code), finding)
    order: dict[str, int] = {}
    for raw in paths:  # the order given: a missing path between the files around it
        walked = [] if str(raw) in missing else _files_with_roots([raw])
        for name in [str(raw)] if str(raw) in missing else [str(file) for file, _ in walked]:
            order.setdefault(STDIN_NAME if name == STDIN else name, len(order))
    return sorted(found.values(), key=lambda f: (order.get(f.path, len(order)), f.line, f.col, f.code))


def _project_for(paths: list, use_config: bool, freeze: bool = False) -> tuple:
    """(entries, roots, configs, project) for the existing ``paths`` of one run."""
    entries = _files_with_roots([raw for raw in paths if str(raw) == STDIN or os.path.lexists(raw)])
    roots = roots_of(file for file, _ in entries if str(file) != STDIN)
    configs = _configs(roots.values()) if use_config else {}
    entries = [(file, root) for file, root in entries if not _excluded(file, root, roots, configs)]
    checked = [(file, root) for file, root in entries if str(file) != STDIN]
    project = ProjectIndex(checked, _load_frozen if freeze else load_tree, _indexed_files(roots.values()))
    return entries, roots, configs, project


def relint_text(text: str, path: str, paths: Sequence[str | os.PathLike[str]]) -> list[Finding]:
    """The findings of ``path`` if its source were ``text``, in the project of ``paths`` (for
    checking a fix before it is offered); a text that does not parse gives its MODE000."""
    tree = parse_source(text, path)
    if isinstance(tree, Finding):
        return [tree]
    _, _, _, project = _project_for(list(paths), use_config=False)
    return without_suppressed(_analyse_variants(tree, path, project), text)


def _lint_entry(
    file: Path,
    select: Sequence[str] | None,
    config: LintConfig,
    project: ProjectIndex,
    sources: dict[str, str],
) -> list[Finding]:
    """Check one file under its project's configuration: the findings it reports."""
    if select:  # --select on the command line replaces the configured select
        config = dataclasses.replace(config, select=tuple(select))
    findings = _lint_in_project(file, config.select or None, project, sources)
    return [finding for finding in findings if config.reports(finding.path, finding.code)]


def _parse_checked(entries: list[tuple[Path, Path | None]], project: ProjectIndex, freeze: bool) -> None:
    """Parse every checked file into the project's trees, as :func:`_lint_in_project` would (a
    file that cannot be read or parsed is left for it to report).  ``freeze``: the trees are
    then moved out of the collector's scans (see :func:`_frozen_between_files`) without a
    collection first, since a fresh syntax tree holds no reference cycle."""
    for file, _ in entries:
        name = str(file)
        try:
            source = read_source(file).removeprefix("\ufeff")
        except UnreadableSource:
            continue
        project.checked_tree(name, lambda source=source, name=name: parse_source(source, name))
    if freeze:
        gc.freeze()


def _load_frozen(path: str) -> ast.Module | None:
    """:func:`load_tree`, its new syntax tree moved out of the collector's scans at once."""
    tree = load_tree(path)
    gc.freeze()
    return tree


@contextlib.contextmanager
def _frozen_between_files(freeze: bool) -> Iterator[Callable[[], None]]:
    """Keep the cyclic garbage collector off what earlier files left alive (syntax trees, caches).

    Each full collection scans every tracked object; with thousands of parsed modules kept for
    the run, those scans were most of the run time.  Automatic collections are off meanwhile;
    after each file, one collection frees its garbage and :func:`gc.freeze` moves the survivors
    out of later scans; at the end they are handed back and the collector is restored (all
    skipped when the caller already froze objects of its own)."""
    if not freeze:
        yield lambda: None
        return

    def file_done() -> None:
        gc.collect()
        gc.freeze()

    collecting = gc.isenabled()
    gc.disable()
    try:
        yield file_done
    finally:
        gc.unfreeze()
        if collecting:
            gc.enable()


def _root_key(root: ProjectRoot | None) -> str | None:
    return None if root is None else str(root.folder)


def _configs(roots: Iterable[ProjectRoot | None]) -> dict[str | None, LintConfig]:
    """Each project root's ``[tool.parity.lint]`` (ParityError for an invalid one)."""
    out: dict[str | None, LintConfig] = {}
    for root in roots:
        if _root_key(root) not in out:
            out[_root_key(root)] = load_config(root.folder if root is not None else None)
    return out


def _excluded(
    file: Path, found_under: Path | None, roots: dict[Path, ProjectRoot | None], configs: dict
) -> bool:
    """A file found by walking a folder that an ``exclude`` glob of its project names (a file
    given by name is always checked, as in ruff)."""
    if found_under is None or str(file) == STDIN:
        return False
    config = configs.get(_root_key(roots.get(file)))
    return config is not None and config.excludes(str(file))
