"""mkdocs hook: every ``notebooks/*.py`` (jupytext percent format) executed by a Jupyter
kernel at ``SMOKE=1`` sizes during the build and rendered as a page with its outputs.

The notebooks are stored without outputs; this hook is the only place they get them. Each
page is generated in memory (``notebooks/<name>.md`` plus its figures as PNG files beside
it), never written to the source tree. The "Notebooks" section of the nav is filled here
from the files found, so a new notebook joins the site without touching ``mkdocs.yml``.
A cell that raises fails the build, and so does a notebook that draws no figure.

``DOCS_SKIP_NOTEBOOKS=1`` (for quick edits of the other pages only) renders each notebook's
cells without running them; ``make docs`` never sets it.
"""

from __future__ import annotations

import base64
import logging
import os
import tempfile
import time
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = ROOT / "notebooks"
SECTION = "Notebooks"  # the nav section this hook fills
log = logging.getLogger("mkdocs.hooks.notebooks")


def notebook_paths() -> list[Path]:
    """The notebooks of the site, in file-name order."""
    return sorted(NOTEBOOKS.glob("[0-9]*.py"))


def on_config(config):
    for entry in config.nav or []:
        if isinstance(entry, dict) and SECTION in entry:
            entry[SECTION] = [f"notebooks/{p.stem}.md" for p in notebook_paths()]
    return config


def _fence(text: str, lang: str = "") -> str:
    ticks = "````" if "```" in text else "```"
    return f"{ticks}{lang}\n{text.rstrip()}\n{ticks}"


def execute(path: Path):
    """The notebook at `path`, executed at SMOKE sizes in a scratch directory."""
    import jupytext
    import nbclient

    nb = jupytext.read(path)
    with tempfile.TemporaryDirectory(prefix="weightspace_docs_") as tmp:
        env = {
            **os.environ,
            "SMOKE": "1",
            "JAX_PLATFORMS": "cpu",
            "OUT_DIR": str(Path(tmp) / "out"),
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        }
        env.pop("MPLBACKEND", None)  # the kernel's inline backend turns figures into outputs
        client = nbclient.NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": tmp}}
        )
        client.execute(env=env)
    return nb


def render(path: Path, nb, need_figure: bool = True) -> tuple[str, dict[str, bytes]]:
    """(markdown, {figure path relative to the docs dir: PNG bytes}) of an executed notebook."""
    stem = path.stem
    parts = [
        f'!!! note "Executed during the docs build"\n    `notebooks/{path.name}` run by a '
        "Jupyter kernel at `SMOKE=1` sizes (small and fast: the numbers are not the "
        "benchmarks'). Run it at full size with `python notebooks/"
        f"{path.name}` or open `notebooks/{stem}.ipynb`."
    ]
    figures: dict[str, bytes] = {}
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            parts.append(cell.source)
            continue
        if cell.cell_type != "code" or not cell.source.strip():
            continue
        parts.append(_fence(cell.source, "python"))
        for out in cell.get("outputs", []):
            if out.output_type == "stream":
                parts.append(_fence(out.text))
            elif out.output_type in ("display_data", "execute_result"):
                data = out.get("data", {})
                if "image/png" in data:
                    name = f"{stem}/figure_{len(figures) + 1}.png"
                    figures[f"notebooks/{name}"] = base64.b64decode(data["image/png"])
                    parts.append(f"![Figure {len(figures)} of {stem}]({name})")
                elif "text/plain" in data:
                    parts.append(_fence(data["text/plain"]))
    if need_figure and not figures:
        raise RuntimeError(f"notebooks/{path.name} drew no figure: a notebook page shows one")
    # The notebook's own title (its first markdown heading) comes first.
    first_md = next((i for i, p in enumerate(parts) if p.lstrip().startswith("# ")), None)
    if first_md is not None:
        parts.insert(0, parts.pop(first_md))
    return "\n\n".join(parts) + "\n", figures


def on_files(files, config):
    skip = os.environ.get("DOCS_SKIP_NOTEBOOKS") == "1"
    for path in notebook_paths():
        t0 = time.perf_counter()
        if skip:
            import jupytext

            markdown, figures = render(path, jupytext.read(path), need_figure=False)
        else:
            markdown, figures = render(path, execute(path))
        files.append(File.generated(config, f"notebooks/{path.stem}.md", content=markdown))
        for uri, png in figures.items():
            files.append(File.generated(config, uri, content=png))
        log.info(
            f"notebooks/{path.name}: executed in {time.perf_counter() - t0:.1f} s, "
            f"{len(figures)} figure(s)"
        )
    return files
