"""Sweep files: Python files that export ``configs``, a list of ``RunConfig`` (training runs) and
``PretrainedRunConfig`` (evaluations of pretrained models); grids are plain loops."""

from __future__ import annotations

import runpy
from pathlib import Path

from pydantic import ValidationError

from recallkit.config import AnyRunConfig, run_config
from recallkit.errors import RecallkitError, first_line, one_line


def load_sweep(path: str | Path) -> list[AnyRunConfig]:
    """Execute the sweep file the user named and return its validated ``configs``.

    Duplicate configs (same run id) are kept once, in first-seen order.
    """
    path = Path(path)
    if not path.is_file():
        raise RecallkitError(f"sweep file not found: {path}")
    try:
        namespace = runpy.run_path(str(path))
    except ValidationError as error:
        raise RecallkitError(f"{path}: {one_line(error)}") from None
    except SystemExit as error:  # sys.exit() in the file: it defined no sweep
        raise RecallkitError(f"{path} exited while loading (SystemExit: {error.code}) before defining "
                             "`configs`") from None
    except KeyboardInterrupt:
        raise
    except BaseException as error:  # noqa: BLE001 - any other, a file's own subclasses too: one line,
        # its first (a message may start with a newline, as matplotlib's do)
        raise RecallkitError(f"{path}: {type(error).__name__}: {first_line(str(error), '(no message)')}") \
            from None
    configs = namespace.get("configs")
    if not isinstance(configs, (list, tuple)) or not configs:
        raise RecallkitError(f"{path} must define a non-empty list `configs` of RunConfig")
    validated: dict[str, AnyRunConfig] = {}
    for i, config in enumerate(configs):
        try:
            config = run_config(config)
        except ValidationError as error:
            raise RecallkitError(f"{path}: configs[{i}]: {one_line(error)}") from None
        validated.setdefault(config.run_id, config)
    return list(validated.values())
