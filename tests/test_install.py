"""A regular (non-editable) install: the wheel carries conf/, and every entry point works outside the checkout.

The slow test builds the wheel from a copy of the working tree (nothing is
written into the checkout), installs it with pip (``--no-deps --no-index``: no
network) into a fresh venv, and runs every entry point there from an empty
folder. The fresh venv sees the dependencies of .venv through a .pth file
pointing at a view of .venv's site-packages without this project's editable
install (its ``__editable__`` finder and dist-info), so the harness can only be
imported from the wheel.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from experiments import paths

REPO = Path(__file__).resolve().parents[1]
# What the wheel is built from (pyproject.toml names the packages; conf/ ships as harness_conf).
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "experiments", "metrics", "analysis", "hydra_plugins", "conf",
           "data")
# Hidden from the fresh venv: the editable install of this project in .venv (and its packages, were they there).
EDITABLE_PREFIXES = ("creativity_harness", "__editable__")
OWN_PACKAGES = {"experiments", "metrics", "analysis", "harness_conf"}

# Each Hydra entry point, its console script, and keys its printed config must hold.
HYDRA_APPS = {
    "experiments.generate": ("harness-generate", ["backend:", "sampling:", "prompt:", "out_dir:"]),
    "metrics.compute": ("harness-metrics", ["stories:", "exemplar:", "metrics:", "out_dir:"]),
    "analysis.report": ("harness-report", ["run_dir:", "criteria:", "out_dir:"]),
    "analysis.reproduce_paper": ("harness-reproduce-paper", ["paper_dir:", "remeasure:", "out_dir:"]),
}


def test_checkout_uses_its_own_conf():
    """From the checkout (or an editable install) the configs are the checkout's conf/, edits included."""
    assert paths.conf_dir() == REPO / "conf"
    import analysis.survey.__main__ as survey

    assert survey.CONF_DIR == REPO / "conf"


def test_every_package_is_listed():
    """pyproject.toml lists its packages (discovery cannot name harness_conf): none may be missing."""
    listed = set(tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    on_disk = {str(folder.relative_to(REPO)).replace(os.sep, ".")
               for top in ("experiments", "metrics", "analysis", "hydra_plugins")
               for folder in [REPO / top, *(REPO / top).rglob("*")]
               if folder.is_dir() and folder.name != "__pycache__" and any(folder.glob("*.py"))}
    assert on_disk <= listed, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(on_disk - listed)}"


def _run(command: list[str], cwd: Path, env: dict[str, str], expect: int = 0) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == expect, (
        f"{' '.join(command)} exited {result.returncode}, expected {expect}:\n"
        f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}")
    return result


def _dependency_view(into: Path) -> Path:
    """Symlinks to everything in .venv's site-packages except this project's editable install."""
    site = Path(sysconfig.get_path("purelib"))
    into.mkdir()
    for entry in site.iterdir():
        if (entry.name.startswith(EDITABLE_PREFIXES) or entry.name in OWN_PACKAGES or entry.suffix == ".pth"
                or entry.name == "__pycache__"):
            continue
        (into / entry.name).symlink_to(entry)
    return into


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    """A fresh venv with the wheel installed; returns its python, bin folder, env and an empty work folder."""
    tmp = tmp_path_factory.mktemp("install")
    source = tmp / "source"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=ignore, symlinks=True)
        else:
            shutil.copy2(path, source / name)

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1",
               PYTHONNOUSERSITE="1")
    wheels = tmp / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          str(source), "-w", str(wheels)], cwd=source, env=env)
    (wheel,) = wheels.glob("creativity_harness-*.whl")

    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp, env=env)
    python = venv / "bin" / "python"
    site = Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                     cwd=tmp, env=env).stdout.strip()).resolve()
    (site / "harness_deps.pth").write_text(f"{_dependency_view(tmp / 'deps')}\n")
    _run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--no-build-isolation", str(wheel)],
         cwd=tmp, env=env)

    work = tmp / "work"
    work.mkdir()
    env = dict(env, VIRTUAL_ENV=str(venv), PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}")
    return {"python": python, "bin": venv / "bin", "venv": venv.resolve(), "conf": site / "harness_conf", "env": env,
            "work": work, "wheel": wheel}


@pytest.mark.slow
def test_installed_modules_and_configs_come_from_the_venv(installed):
    """The harness is imported from the wheel, and its configs are the wheel's harness_conf, not the checkout's."""
    probe = ("import json, sys, experiments.generate, metrics.compute, analysis.report, analysis.reproduce_paper, "
             "analysis.survey.__main__ as survey, hydra_plugins.harness_sweeper, experiments.paths as paths; "
             "print(json.dumps({'files': [m.__file__ for m in (experiments.generate, metrics.compute, analysis.report, "
             "analysis.reproduce_paper, survey, hydra_plugins.harness_sweeper)], 'conf': str(paths.conf_dir()), "
             "'survey_conf': str(survey.CONF_DIR), 'path': sys.path}))")
    found = json.loads(_run([str(installed["python"]), "-c", probe], cwd=installed["work"],
                            env=installed["env"]).stdout.strip().splitlines()[-1])
    venv = installed["venv"]
    for file in found["files"]:
        assert Path(file).resolve().is_relative_to(venv), f"{file} is not from the fresh venv"
    conf = Path(found["conf"])
    assert conf == installed["conf"]
    assert Path(found["survey_conf"]) == conf
    for name in ("config.yaml", "compute_metrics.yaml", "report.yaml", "reproduce_paper.yaml",
                 "survey_export.yaml", "survey_import.yaml", "hydra/launcher/local.yaml", "backend/hf.yaml"):
        assert (conf / name).is_file(), f"{name} is not in the wheel"
    assert not any(Path(entry).resolve() == REPO for entry in found["path"] if entry), "the checkout is on sys.path"
    kernel = _run([str(installed["python"]), "-c", "from experiments.backends import attention_kernel as k; "
                   "print(k.SOURCE.resolve(), k.SOURCE.is_file())"], cwd=installed["work"], env=installed["env"])
    source, present = kernel.stdout.split()
    assert Path(source).is_relative_to(venv) and present == "True", "the attention kernel's source is not in the wheel"


@pytest.mark.slow
@pytest.mark.parametrize("module", sorted(HYDRA_APPS))
def test_installed_hydra_entry_points(installed, module):
    """``python -m MODULE --cfg job`` and its console script print the same config, from an empty folder."""
    script, keys = HYDRA_APPS[module]
    by_module = _run([str(installed["python"]), "-m", module, "--cfg", "job"], cwd=installed["work"],
                     env=installed["env"]).stdout
    by_script = _run([str(installed["bin"] / script), "--cfg", "job"], cwd=installed["work"],
                     env=installed["env"]).stdout
    for key in keys:
        assert any(line.startswith(key) for line in by_module.splitlines()), f"{key} missing:\n{by_module}"
    assert by_script == by_module
    hydra_config = _run([str(installed["bin"] / script), "--cfg", "hydra"], cwd=installed["work"],
                        env=installed["env"]).stdout
    assert f"- path: {installed['conf']}\n      schema: file\n      provider: main" in hydra_config, hydra_config
    assert not any(installed["work"].iterdir()), "--cfg wrote files"


@pytest.mark.slow
def test_installed_survey_entry_point(installed):
    """The survey is not a Hydra app: --help, and a misspelt key caught by composing the installed configs."""
    for command in ([str(installed["python"]), "-m", "analysis.survey"], [str(installed["bin"] / "harness-survey")]):
        usage = _run([*command, "--help"], cwd=installed["work"], env=installed["env"]).stderr
        assert "python -m analysis.survey export" in usage
        error = _run([*command, "export", "run_dir=nowhere", "no_such_key=1"], cwd=installed["work"],
                     env=installed["env"], expect=2).stderr
        assert "unknown key; allowed:" in error and "participants" in error, error
    probe = ("from analysis.survey.__main__ import load_config; "
             "print(load_config('export', ['run_dir=runs/x']).out_dir, load_config('import', ['input=a', 'out=b']).format)")
    assert _run([str(installed["python"]), "-c", probe], cwd=installed["work"],
                env=installed["env"]).stdout.split() == ["runs/x/survey", "auto"]
