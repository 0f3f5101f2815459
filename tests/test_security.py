"""Security: loopback-only servers, no unsafe deserialisation, no leaked credentials, no path escape."""

import ast
import importlib
import re
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import PROJECT_ROOT, RepoCopy, isolated_env, make_repo_copy, project_files
from repo_state import changed_files, file_digests, run_stage_in_process, stage_argv

from pipeline.errors import ParamsError, PipelineError
from pipeline.params import ARM_NAME_PATTERN, Params, load_params
from pipeline.train import arm_of_stage

# Made at run time, so that no file of the project contains it.
SECRET = f"pw-{uuid.uuid4().hex}"


def python_sources() -> list[Path]:
    return [PROJECT_ROOT / name for name in project_files() if name.endswith(".py")]


def test_make_ui_host_is_loopback():
    venv = Path(sys.prefix)
    result = subprocess.run(
        ["make", "-n", "ui", f"VENV={venv}", "-o", str(venv / ".installed")],
        cwd=PROJECT_ROOT, env=isolated_env(), capture_output=True, text=True, check=True,
    )
    [command] = [line for line in result.stdout.splitlines() if "mlflow ui" in line]

    assert re.findall(r"--host[ =](\S+)", command) == ["127.0.0.1"]


def test_server_hosts_in_sources_are_loopback():
    # Every host that a server command or fixture of the project names. The
    # README may show how to run a team's own server; it starts nothing.
    offenders = []
    for name in project_files():
        if not name.endswith((".py", ".toml", ".yaml", ".yml", ".cfg", ".sh")) and name not in ("Makefile", ".ci/run"):
            continue
        text = (PROJECT_ROOT / name).read_text(errors="replace")
        for match in re.finditer(r"""(?:--host["',\s=]+|host\s*=\s*)["']?([\w.:\[\]-]+)""", text):
            if match.group(1) not in ("127.0.0.1",) and not match.group(1).startswith("$"):
                offenders.append(f"{name}: {match.group(0)}")
        if "0.0.0.0" in text and name != "tests/test_security.py":
            offenders.append(f"{name}: 0.0.0.0")
    assert offenders == []


# --- no unsafe deserialisation -------------------------------------------------

UNSAFE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"}
UNSAFE_YAML_CALLS = {"unsafe_load", "unsafe_load_all", "full_load", "full_load_all"}


def unsafe_calls(source: str, label: str, module_name: str | None = None) -> list[str]:
    """Return the unsafe loads in one source text, as 'label:line: code'.

    `module_name` lets a `yaml.load(..., Loader=Name)` resolve Name in that
    module and accept it if it is a SafeLoader subclass.
    """
    found = []
    for node in ast.walk(ast.parse(source)):
        where = f"{label}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found += [f"{where}: import {module}" for module in modules if module.split(".")[0] in UNSAFE_MODULES]
        if not isinstance(node, ast.Call):
            continue
        name = ast.unparse(node.func)
        if name.split(".")[-1] in UNSAFE_YAML_CALLS:
            found.append(f"{where}: {name}")
        if name in ("yaml.load", "yaml.load_all"):
            loader = _keyword(node, "Loader")
            if loader is None or not _is_safe_loader(ast.unparse(loader), module_name):
                found.append(f"{where}: {name} with Loader={ast.unparse(loader) if loader else None}")
        typ = _keyword(node, "typ")
        if name.split(".")[-1] == "YAML" and typ is not None and not _is_safe_ruamel_type(typ):
            found.append(f"{where}: {name} with typ={ast.unparse(typ)}")
        if name.endswith("torch.load") and not _is_constant(_keyword(node, "weights_only"), True):
            found.append(f"{where}: {name} without weights_only=True")
        allow_pickle = _keyword(node, "allow_pickle")
        if name in ("np.load", "numpy.load") and allow_pickle is not None and not _is_constant(allow_pickle, False):
            found.append(f"{where}: {name} with allow_pickle={ast.unparse(allow_pickle)}")
    return found


def _keyword(node: ast.Call, name: str) -> ast.expr | None:
    return next((keyword.value for keyword in node.keywords if keyword.arg == name), None)


def _is_constant(node: ast.expr | None, value: bool) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


def _is_safe_ruamel_type(typ: ast.expr) -> bool:
    # ruamel.yaml's "unsafe" type builds arbitrary Python objects; its default
    # round-trip type and "safe" build only plain YAML types.
    return isinstance(typ, ast.Constant) and typ.value in ("rt", "safe")


def _is_safe_loader(expression: str, module_name: str | None) -> bool:
    if expression in ("yaml.SafeLoader", "yaml.CSafeLoader"):
        return True
    if module_name is None:
        return False
    loader = getattr(importlib.import_module(module_name), expression, None)
    return isinstance(loader, type) and issubclass(loader, yaml.SafeLoader)


def _module_name(path: Path) -> str | None:
    relative = path.relative_to(PROJECT_ROOT).with_suffix("")
    return ".".join(relative.parts) if relative.parts[0] == "pipeline" else None


def test_no_unsafe_deserialisation():
    sources = python_sources()
    found = [
        line
        for path in sources
        for line in unsafe_calls(path.read_text(), str(path.relative_to(PROJECT_ROOT)), _module_name(path))
    ]

    assert any(path.name == "params.py" for path in sources)
    assert found == []


def test_unsafe_call_detection():
    # The scanner must flag each unsafe form, or the test above proves nothing.
    sample = (
        "import pickle\nimport yaml, torch, numpy as np\n"
        "yaml.load(open('p'), Loader=yaml.Loader)\nyaml.unsafe_load('x')\n"
        "torch.load('w.pt')\nnp.load('a.npz', allow_pickle=True)\n"
        "yaml.load(open('p'), Loader=yaml.SafeLoader)\ntorch.load('w.pt', weights_only=True)\n"
        "YAML(typ='unsafe').load('x')\nYAML(typ='rt').load('x')\n"
    )

    found = unsafe_calls(sample, "sample")

    assert [line.split(": ", 1)[1] for line in found] == [
        "import pickle",
        "yaml.load with Loader=yaml.Loader",
        "yaml.unsafe_load",
        "torch.load without weights_only=True",
        "np.load with allow_pickle=True",
        "YAML with typ='unsafe'",
    ]


def test_yaml_python_tag_not_executed(tmp_path):
    marker = tmp_path / "executed"
    params = tmp_path / "params.yaml"
    params.write_text(f"dataset: !!python/object/apply:os.system ['touch {marker}']\n")

    with pytest.raises(ParamsError, match="could not determine a constructor for the tag"):
        load_params(params)
    assert not marker.exists()


# --- credentials in MLFLOW_TRACKING_URI ----------------------------------------
# tests/test_tracking_server.py checks a real server's runs and an unreachable
# server. This section checks an error raised inside MLflow, which quotes the URI.

def run_train(repo: RepoCopy, uri: str, **extra_env: str) -> subprocess.CompletedProcess:
    env = {**repo.env, "MLFLOW_TRACKING_URI": uri, **extra_env}
    return subprocess.run(
        ["python", "-m", "pipeline.train", *stage_argv(repo.path, "train")],
        cwd=repo.path, env=env, capture_output=True, text=True, timeout=600,
    )


def answer_health_check_then_close(listener: socket.socket) -> None:
    """Reply 200 OK to one request, then close the listener, like a server that has just crashed."""
    connection, _ = listener.accept()
    with connection:
        connection.recv(65536)
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nOK")
    listener.close()


@pytest.mark.slow
def test_password_hidden_in_unexpected_error(reproduced_repo):
    # The first MLflow request after the health check is refused, and MLflow's
    # own error message quotes the whole URI, password included.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = threading.Thread(target=answer_health_check_then_close, args=(listener,))
    server.start()
    files_before = file_digests(reproduced_repo.path)

    result = run_train(
        reproduced_repo, f"http://tester:{SECRET}@127.0.0.1:{port}",
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0", MLFLOW_HTTP_REQUEST_TIMEOUT="10",
    )
    server.join(timeout=10)

    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "creating the MLflow run failed" in output
    assert f"http://tester:***@127.0.0.1:{port}" in output
    assert SECRET not in output
    assert changed_files(files_before, file_digests(reproduced_repo.path)) == []


# --- no path escape ---------------------------------------------------------------

@pytest.mark.parametrize("name", ["..", "../outside", "a/../../b", "/tmp/x", ".hidden", "-rf", "a\\b", "ok\n"])
def test_arm_name_cannot_leave_folder(name):
    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    raw["arms"] = {name: {"max_norm": 1.0}}

    with pytest.raises(ValueError, match="is invalid"):
        Params.model_validate(raw)


@pytest.mark.parametrize("name", ["clip", "clip_0_5", "A-1", "_x", "9"])
def test_valid_arm_name_stays_in_folder(name):
    folder = Path("/repo/outputs/steps")

    assert ARM_NAME_PATTERN.fullmatch(name)
    assert (folder / f"{name}.csv").resolve().parent == folder


def test_experiment_name_is_not_a_path(tmp_path):
    # The experiment name only names the MLflow experiment; artifacts go under
    # mlartifacts/<experiment id>, whatever the name holds.
    repo = make_repo_copy(tmp_path / "repo")
    assert run_stage_in_process(repo.path, "dataset") == 0
    repo.set_param("tracking.experiment_name", "../../escape")
    before = file_digests(tmp_path)

    status = run_stage_in_process(repo.path, "train", "clip")

    written = changed_files(before, file_digests(tmp_path))
    assert status == 0
    assert "repo/outputs/steps/clip.csv" in written
    allowed = ("repo/outputs/", "repo/metrics/", "repo/mlflow.db", "repo/mlartifacts/")
    assert [name for name in written if not name.startswith(allowed)] == []
    client = repo.mlflow_client()
    experiment = client.get_experiment_by_name("../../escape")
    assert experiment.artifact_location == (repo.path / "mlartifacts").as_uri()
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"


def test_arm_name_never_reaches_the_shell(reproduced_repo):
    # DVC runs a stage's command through a shell. Were the arm name on that
    # command line, the shell would run the `$(...)` before the stage starts.
    name = "x$(touch injected)"
    raw = reproduced_repo.params()
    raw["arms"][name] = {"max_norm": 1.0}
    reproduced_repo.write_params(raw)

    result = reproduced_repo.run("dvc", "repro", f"train@{name}", check=False)

    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert f"arm name {name!r} is invalid" in output
    assert list(reproduced_repo.path.rglob("injected")) == []
    assert not (reproduced_repo.path / "outputs/steps" / f"{name}.csv").exists()


@pytest.mark.parametrize(
    ("stage", "arm"),
    [("train@clip", "clip"), ("sub/dvc.yaml:train@clip_tight", "clip_tight"), ("train@", "")],
)
def test_arm_of_stage(stage, arm):
    assert arm_of_stage(stage) == arm


@pytest.mark.parametrize("stage", [None, "", "plots", "dataset@clip", "train"])
def test_arm_of_other_stage_asks_for_arm(stage):
    with pytest.raises(PipelineError, match="pass --arm NAME"):
        arm_of_stage(stage)
