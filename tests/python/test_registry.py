"""`olive-host model create|list|show|download` against a real `mlflow server` (MLflow REST API 2.0, the
artifact proxy): byte-for-byte round trips, the `mlflow` client reading what we published, resumed uploads
after a dropped connection and after the server was killed mid-upload, and bad input leaving nothing behind."""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

NAME = "ft-for-travel"
ADMIN_PASSWORD = "olive-test-admin-pw-1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """An `mlflow server` on loopback with a sqlite backend and a served artifact root, in its own process group."""

    def __init__(self, root: Path, auth: bool = False):
        self.root, self.auth, self.port = root, auth, free_port()
        self.root.mkdir(parents=True, exist_ok=True)
        self.artifacts = root / "artifacts"
        self.proc = None

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        cmd = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port),
               "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
               "--artifacts-destination", str(self.artifacts), "--serve-artifacts", "--workers", "1"]
        if self.auth:
            cmd += ["--app-name", "basic-auth"]
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false",
                   MLFLOW_AUTH_ADMIN_PASSWORD=ADMIN_PASSWORD,
                   MLFLOW_FLASK_SERVER_SECRET_KEY="olive-test-secret")
        log = open(self.root / "server.log", "ab")
        self.proc = subprocess.Popen(cmd, cwd=self.root, env=env, stdout=log, stderr=log, start_new_session=True)

    def wait(self, timeout=120):
        deadline = time.time() + timeout
        url = self.uri + "/api/2.0/mlflow/registered-models/search?max_results=1"
        while time.time() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"mlflow server exited with {self.proc.returncode}: {(self.root / 'server.log').read_text()[-3000:]}")
            try:
                urllib.request.urlopen(url, timeout=2)
                return
            except urllib.error.HTTPError as e:
                if e.code == 401 and self.auth:
                    return
            except OSError:
                pass
            time.sleep(0.25)
        pytest.fail(f"mlflow server did not answer in {timeout} s: {(self.root / 'server.log').read_text()[-3000:]}")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    try:
        import mlflow  # noqa: F401
    except ImportError:
        pytest.fail("the test venv lacks mlflow: run `make test` (tests/python/requirements.txt pins it)")
    root = tmp_path_factory.mktemp("mlflow")
    plain, auth = Server(root / "plain"), Server(root / "auth", auth=True)
    plain.start()
    auth.start()
    try:
        plain.wait()
        auth.wait()
        yield plain, auth
    finally:
        plain.kill()
        auth.kill()


def host(olive_host, *args, uri=None, env=None):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    full_env.update(env or {})
    if uri:
        full_env["MLFLOW_TRACKING_URI"] = uri
    return subprocess.run([str(olive_host), "model", *args], capture_output=True, text=True, env=full_env, timeout=300)


def make_folder(path: Path, seed: int, big_mb: int = 6) -> Path:
    rng = random.Random(seed)
    (path / "model").mkdir(parents=True)
    (path / "a_config.json").write_text('{"seed": %d}\n' % seed)
    (path / "model" / "model.onnx").write_bytes(rng.randbytes(100_000))
    (path / "model" / "model.onnx.data").write_bytes(rng.randbytes(big_mb << 20))
    (path / "model" / "z tokenizer+1.json").write_bytes(rng.randbytes(3000))
    return path


def files_of(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def client(server):
    """The mlflow client, pointed at `server` (its default registry would be a sqlite file in the cwd)."""
    import mlflow
    from mlflow.tracking import MlflowClient
    mlflow.set_tracking_uri(server.uri)
    mlflow.set_registry_uri(server.uri)
    return MlflowClient(tracking_uri=server.uri, registry_uri=server.uri)


def test_round_trip_and_mlflow_client(olive_host, servers, tmp_path):
    server, _ = servers
    src = make_folder(tmp_path / "onnx-ao", seed=1)
    r = host(olive_host, "create", "--name", NAME, "--version", "1", "--path", str(src), "--tag", "task=travel",
             "--description", "phi travel", uri=server.uri)
    assert r.returncode == 0, r.stderr
    assert "registered ft-for-travel version 1" in r.stdout

    r = host(olive_host, "list", uri=server.uri)
    assert r.returncode == 0, r.stderr
    assert any(line.split("\t")[:2] == [NAME, "1"] for line in r.stdout.splitlines()), r.stdout
    r = host(olive_host, "list", "--name", NAME, "--registry_uri", server.uri)
    assert r.returncode == 0 and r.stdout.startswith("1\tREADY\tmlflow-artifacts:/"), r.stdout + r.stderr
    r = host(olive_host, "show", "--name", NAME, "--version", "1", uri=server.uri)
    assert r.returncode == 0 and '"model/model.onnx.data"' in r.stdout, r.stdout + r.stderr

    out = tmp_path / "down"
    r = host(olive_host, "download", "--name", NAME, "--version", "1", "--output_path", str(out), uri=server.uri)
    assert r.returncode == 0, r.stderr
    assert files_of(out) == files_of(src)

    # The mlflow client sees the model and its version, and downloads the same bytes.
    import mlflow
    c = client(server)
    model = c.get_registered_model(NAME)
    assert model.name == NAME
    version = c.get_model_version(NAME, "1")
    assert version.tags["task"] == "travel" and version.description == "phi travel"
    assert version.status == "READY"
    got = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{NAME}/1", dst_path=str(tmp_path / "by-mlflow"),
                                              tracking_uri=server.uri)
    assert files_of(Path(got)) == files_of(src)

    # An existing version is refused; the next number is the only new one; --overwrite replaces the files.
    r = host(olive_host, "create", "--name", NAME, "--version", "1", "--path", str(src), uri=server.uri)
    assert r.returncode != 0 and "exists already" in r.stderr and "--overwrite" in r.stderr
    r = host(olive_host, "create", "--name", NAME, "--version", "5", "--path", str(src), uri=server.uri)
    assert r.returncode != 0 and "the next version of `ft-for-travel` is 2" in r.stderr
    new = make_folder(tmp_path / "new", seed=2, big_mb=1)
    (new / "a_config.json").unlink()
    (new / "extra.txt").write_text("added\n")
    r = host(olive_host, "create", "--name", NAME, "--version", "1", "--path", str(new), "--overwrite", uri=server.uri)
    assert r.returncode == 0, r.stderr
    out2 = tmp_path / "down2"
    r = host(olive_host, "download", "--name", NAME, "--version", "1", "--output_path", str(out2), uri=server.uri)
    assert r.returncode == 0, r.stderr
    assert files_of(out2) == files_of(new)
    assert [v.version for v in c.search_model_versions(f"name='{NAME}'")] == ["1"]
    got = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{NAME}/1", dst_path=str(tmp_path / "by-mlflow2"),
                                              tracking_uri=server.uri)
    assert files_of(Path(got)) == files_of(new)
    # A download never overwrites a folder.
    r = host(olive_host, "download", "--name", NAME, "--version", "1", "--output_path", str(out2), uri=server.uri)
    assert r.returncode != 0 and "exists already" in r.stderr


class CuttingProxy:
    """Forwards loopback TCP to a port; once `cut_after` request bytes went through, it drops every connection
    and calls `on_cut`. `die=True`: it then refuses connections (the server gone); else it serves on."""

    def __init__(self, target_port, cut_after, die, on_cut=lambda: None):
        self.target, self.cut_after, self.die, self.on_cut = target_port, cut_after, die, on_cut
        self.sent, self.cut, self.lock, self.conns = 0, False, threading.Lock(), []
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.conns += [down, up]
            threading.Thread(target=self._pipe, args=(down, up, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, down, False), daemon=True).start()

    def _pipe(self, src, dst, count):
        try:
            while data := src.recv(65536):
                if count:
                    with self.lock:
                        self.sent += len(data)
                        fire = not self.cut and self.sent > self.cut_after
                        if fire:
                            self.cut = True
                    if fire:
                        self.on_cut()
                        if self.die:
                            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
                            self.listener.close()
                        with self.lock:
                            for s in self.conns:
                                try:
                                    s.shutdown(socket.SHUT_RDWR)
                                except OSError:
                                    pass
                                s.close()
                            self.conns.clear()
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def upload_runs(server, name, version):
    c = client(server)
    exp = c.get_experiment_by_name("olive-host model uploads")
    if exp is None:
        return []
    return [r for r in c.search_runs([exp.experiment_id]) if r.data.tags.get("olive.registry.target") == f"{name}/{version}"]


def test_dropped_connection_is_retried(olive_host, servers, tmp_path):
    server, _ = servers
    src = make_folder(tmp_path / "m", seed=3)
    proxy = CuttingProxy(server.port, cut_after=3 << 20, die=False)
    r = host(olive_host, "create", "--name", "retried", "--version", "1", "--path", str(src), "--log_level", "1",
             uri=f"http://127.0.0.1:{proxy.port}")
    assert proxy.cut, "the proxy never cut the upload"
    assert r.returncode == 0, r.stderr
    assert "retrying" in r.stderr
    out = tmp_path / "down"
    assert host(olive_host, "download", "--name", "retried", "--version", "1", "--output_path", str(out),
                uri=server.uri).returncode == 0
    assert files_of(out) == files_of(src)


def test_server_killed_mid_upload_resumes(olive_host, servers, tmp_path):
    server, _ = servers
    src = make_folder(tmp_path / "m", seed=4, big_mb=8)
    proxy = CuttingProxy(server.port, cut_after=4 << 20, die=True, on_cut=server.kill)
    r = host(olive_host, "create", "--name", "resumed", "--version", "1", "--path", str(src), "--retries", "1",
             "--log_level", "1", uri=f"http://127.0.0.1:{proxy.port}")
    assert proxy.cut and server.proc.poll() is not None
    assert r.returncode != 0
    assert "unreachable" in r.stderr and "rerun the same command to resume" in r.stderr
    assert "uploading a_config.json" in r.stderr and "uploading model/model.onnx.data" in r.stderr
    server.start()
    server.wait()
    from mlflow.exceptions import MlflowException
    with pytest.raises(MlflowException):
        client(server).get_registered_model("resumed")
    r = host(olive_host, "create", "--name", "resumed", "--version", "1", "--path", str(src), "--log_level", "1",
             uri=server.uri)
    assert r.returncode == 0, r.stderr
    assert "a_config.json: already uploaded" in r.stderr and "model/model.onnx: already uploaded" in r.stderr
    assert "uploading model/model.onnx.data" in r.stderr
    assert "3 file(s) uploaded" not in r.stdout and "2 already uploaded" in r.stdout
    runs = upload_runs(server, "resumed", "1")
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    # Nothing lost or duplicated in the store: exactly the folder's files and the manifest, besides the temp file
    # of the PUT the server was killed in (which mlflow itself hides from every listing and download).
    from mlflow.store.artifact.local_artifact_repo import _TEMP_ARTIFACT_PREFIX
    stored = server.artifacts / runs[0].info.artifact_uri.split("mlflow-artifacts:/", 1)[1]
    debris = [p for p in stored.rglob("*") if p.name.startswith(_TEMP_ARTIFACT_PREFIX)]
    assert len(debris) <= 1
    for p in debris:
        p.unlink()
    assert sorted(files_of(stored)) == sorted(["olive-manifest.json"] + [f"model/{k}" for k in files_of(src)])
    assert {k: v for k, v in files_of(stored).items() if k.startswith("model/")} == {
        f"model/{k}": v for k, v in files_of(src).items()}
    assert [v.version for v in client(server).search_model_versions("name='resumed'")] == ["1"]
    import mlflow
    got = mlflow.artifacts.download_artifacts(artifact_uri="models:/resumed/1", dst_path=str(tmp_path / "by-mlflow"),
                                              tracking_uri=server.uri)
    assert files_of(Path(got)) == files_of(src)


def test_bad_input(olive_host, servers, tmp_path):
    server, auth = servers
    src = make_folder(tmp_path / "m", seed=5, big_mb=1)

    r = host(olive_host, "create", "--name", "x", "--version", "1", "--path", str(src), "--retries", "1",
             uri=f"http://127.0.0.1:{free_port()}")
    assert r.returncode != 0 and "registry unreachable" in r.stderr and "Connection refused" in r.stderr
    r = host(olive_host, "list")
    assert r.returncode != 0 and "pass --registry_uri or set MLFLOW_TRACKING_URI" in r.stderr
    r = host(olive_host, "list", "--registry_uri", "azureml://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/s")
    assert r.returncode != 0 and "MLFLOW_TRACKING_TOKEN" in r.stderr

    for bad in ["bad/name", "bad name", ".bad", "bäd", "a:b"]:
        r = host(olive_host, "create", "--name", bad, "--version", "1", "--path", str(src), uri=server.uri)
        assert r.returncode != 0 and "a model name is 1-255 characters" in r.stderr, (bad, r.stderr)
    r = host(olive_host, "create", "--name", "nopath", "--version", "1", "--path", str(tmp_path / "missing"),
             uri=server.uri)
    assert r.returncode != 0 and "missing" in r.stderr and "cannot read it" in r.stderr
    r = host(olive_host, "create", "--name", "badversion", "--version", "v1", "--path", str(src), uri=server.uri)
    assert r.returncode != 0 and "whole numbers" in r.stderr
    names = {m.name for m in client(server).search_registered_models()}
    assert not names & {"bad/name", "bad name", ".bad", "bäd", "a:b", "nopath", "badversion", "x"}
    assert upload_runs(server, "nopath", "1") == []

    wrong = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "wrong"}
    r = host(olive_host, "create", "--name", "authed", "--version", "1", "--path", str(src), uri=auth.uri, env=wrong)
    assert r.returncode != 0 and "refused the credentials (HTTP 401)" in r.stderr, r.stderr
    right = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD}
    r = host(olive_host, "list", uri=auth.uri, env=right)
    assert r.returncode == 0 and "authed" not in r.stdout, r.stdout + r.stderr
    r = host(olive_host, "create", "--name", "authed", "--version", "1", "--path", str(src), uri=auth.uri, env=right)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "down"
    r = host(olive_host, "download", "--name", "authed", "--version", "1", "--output_path", str(out), uri=auth.uri,
             env=right)
    assert r.returncode == 0 and files_of(out) == files_of(src)


def test_model_name_or_path_from_registry(olive_host, servers, tiny, tmp_path):
    server, _ = servers
    r = host(olive_host, "create", "--name", "tiny-llama", "--version", "1", "--path", str(tiny), uri=server.uri)
    assert r.returncode == 0, r.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=server.uri, OLIVE_CACHE_DIR=str(tmp_path / "cache"))

    def evaluate(model):
        return subprocess.run([str(olive_host), "evaluate", "--model_name_or_path", model, "--metrics", "perplexity"],
                              capture_output=True, text=True, env=env, timeout=300)

    local, remote = evaluate(str(tiny)), evaluate("models:/tiny-llama/1")
    assert local.returncode == 0 and remote.returncode == 0, local.stderr + remote.stderr
    assert remote.stdout == local.stdout and "perplexity" in local.stdout, local.stdout
    cached = list((tmp_path / "cache" / "registry").iterdir())
    assert len(cached) == 1 and files_of(cached[0]) == files_of(tiny)
    assert evaluate("models:/tiny-llama/1").returncode == 0  # from the cache
    assert len(list((tmp_path / "cache" / "registry").iterdir())) == 1
    missing = evaluate("models:/tiny-llama/7")
    assert missing.returncode != 0 and "version 7 not found in the registry" in missing.stderr

    def generate(model):
        return subprocess.run([str(olive_host), "generate", "--model_name_or_path", model, "--prompt", "Hello",
                               "--max_new_tokens", "4"], capture_output=True, text=True, env=env, timeout=300)

    local, remote = generate(str(tiny)), generate("models:/tiny-llama/1")
    assert local.returncode == 0 and remote.returncode == 0, local.stderr + remote.stderr
    assert remote.stdout == local.stdout and local.stdout, local.stdout


def test_lab_onnx_ao_round_trip(olive_host, servers, tiny, tmp_path):
    """The lab's ends: an auto-opt output made from a registered model, published and fetched back byte for byte."""
    server, _ = servers
    r = host(olive_host, "create", "--name", "tiny-base", "--version", "1", "--path", str(tiny), uri=server.uri)
    assert r.returncode == 0, r.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=server.uri, OLIVE_CACHE_DIR=str(tmp_path / "cache"))
    onnx_ao = tmp_path / "onnx-ao"
    r = subprocess.run([str(olive_host), "auto-opt", "--model_name_or_path", "models:/tiny-base/1", "--device", "cpu",
                        "--provider", "CPUExecutionProvider", "--use_ort_genai", "--output_path", str(onnx_ao)],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert (onnx_ao / "model" / "genai_config.json").is_file()
    r = host(olive_host, "create", "--name", "ft-for-travel-tiny", "--version", "1", "--path", str(onnx_ao),
             uri=server.uri)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "down"
    r = host(olive_host, "download", "--name", "ft-for-travel-tiny", "--version", "1", "--output_path", str(out),
             uri=server.uri)
    assert r.returncode == 0, r.stderr
    assert files_of(out) == files_of(onnx_ao)
    import mlflow
    client(server)
    got = mlflow.artifacts.download_artifacts(artifact_uri="models:/ft-for-travel-tiny/1",
                                              dst_path=str(tmp_path / "by-mlflow"), tracking_uri=server.uri)
    assert files_of(Path(got)) == files_of(onnx_ao)


def test_delete_version_and_model(olive_host, servers, tmp_path):
    server, _ = servers
    src = make_folder(tmp_path / "m", seed=7, big_mb=1)
    name = "to-delete"

    def create(version):
        return host(olive_host, "create", "--name", name, "--version", version, "--path", str(src), uri=server.uri)

    assert create("1").returncode == 0 and create("2").returncode == 0
    run_of_2 = json.loads(host(olive_host, "show", "--name", name, "--version", "2", uri=server.uri).stdout)["run_id"]
    r = host(olive_host, "delete", "--name", name, "--version", "2", uri=server.uri)
    assert r.returncode == 0 and r.stdout.strip() == "deleted to-delete version 2", r.stdout + r.stderr
    r = host(olive_host, "show", "--name", name, "--version", "2", uri=server.uri)
    assert r.returncode != 0 and "version 2 not found" in r.stderr
    mlflow_client = client(server)
    assert [v.version for v in mlflow_client.search_model_versions(f"name='{name}'")] == ["1"]
    assert mlflow_client.get_run(run_of_2).info.lifecycle_stage == "deleted"
    # MLflow never reuses number 2: the next version is 3.
    r = create("2")
    assert r.returncode != 0 and "the next version of `to-delete` is 3" in r.stderr, r.stderr
    assert create("3").returncode == 0
    # A version deleted by another client: the server's number wins, the error names the next one, and it works.
    mlflow_client.delete_model_version(name, "3")
    r = create("3")
    assert r.returncode != 0 and "numbered the new version 4" in r.stderr and "the next version is 5" in r.stderr
    r = create("5")
    assert r.returncode == 0 and "version 5" in r.stdout, r.stderr
    r = host(olive_host, "list", "--name", name, "--json", uri=server.uri)
    assert r.returncode == 0 and [v["version"] for v in json.loads(r.stdout)] == ["1", "5"], r.stdout + r.stderr
    r = host(olive_host, "list", "--json", uri=server.uri)
    assert r.returncode == 0 and name in {m["name"] for m in json.loads(r.stdout)}, r.stdout + r.stderr
    r = host(olive_host, "delete", "--name", name, "--version", "9", uri=server.uri)
    assert r.returncode != 0 and "version 9 not found" in r.stderr

    r = host(olive_host, "delete", "--name", name, uri=server.uri)
    assert r.returncode == 0 and r.stdout.strip() == "deleted model to-delete and its 2 version(s) (1, 5)", r.stdout
    assert name not in {m.name for m in mlflow_client.search_registered_models()}
    r = host(olive_host, "list", uri=server.uri)
    assert r.returncode == 0 and not any(line.startswith(name + "\t") for line in r.stdout.splitlines())
    r = host(olive_host, "delete", "--name", name, uri=server.uri)
    assert r.returncode != 0 and "model `to-delete` not found" in r.stderr
    assert create("1").returncode == 0  # a new registered model numbers from 1 again


def test_workflow_input_model_from_registry(olive_host, servers, tiny, tmp_path):
    """`olive-host run`: input_model.model_path (HfModel and OnnxModel) and --model_name_or_path as models:/."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    server, _ = servers
    plain = tmp_path / "plain"
    plain.mkdir()
    w = numpy_helper.from_array(np.ones((4, 2), dtype=np.float32), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    onnx.save(model, str(plain / "model.onnx"))
    for name, path in [("wf-onnx", plain), ("wf-hf", tiny)]:
        r = host(olive_host, "create", "--name", name, "--version", "1", "--path", str(path), uri=server.uri)
        assert r.returncode == 0, r.stderr
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_TRACKING_URI=server.uri, OLIVE_CACHE_DIR=str(tmp_path / "cache"))

    def run(config, *args):
        (tmp_path / "wf.json").write_text(json.dumps(config))
        return subprocess.run([str(olive_host), "run", "--config", "wf.json", *args], cwd=tmp_path,
                              capture_output=True, text=True, env=env, timeout=300)

    r = run({"input_model": {"type": "OnnxModel", "model_path": "models:/wf-onnx/1"},
             "passes": {"peephole": {"type": "OnnxPeepholeOptimizer"}}, "output_dir": "out"})
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "model" / "model.onnx").is_file()
    inputs = json.loads((tmp_path / "out" / "footprints.json").read_text())
    input_path = inputs["nodes"][inputs["input_model_id"]]["model_config"]["config"]["model_path"]
    assert input_path.startswith(str(tmp_path / "cache" / "registry")), input_path

    hf = {"input_model": {"type": "HfModel", "model_path": "models:/wf-hf/1"},
          "passes": {"rtn": {"type": "Rtn"}}, "output_dir": "out-hf"}
    r = run(hf, "--dry_run")
    assert r.returncode == 0 and "is valid" in r.stdout, r.stderr
    r = run(dict(hf, input_model={"type": "HfModel", "model_path": "models:/wf-hf/2"}), "--dry_run")
    assert r.returncode != 0 and "input_model.model_path" in r.stderr and "version 2 not found" in r.stderr
    r = run(dict(hf, input_model={"type": "HfModel", "model_path": "elsewhere"}), "--dry_run",
            "--model_name_or_path", "models:/wf-hf/1")
    assert r.returncode == 0, r.stderr


def test_model_name_or_path_hub_id_from_hf_home(olive_host, tiny, tmp_path):
    """A hub id resolves offline to its snapshot under $HF_HOME/hub; a missing one names the folder looked in."""
    snapshot = tmp_path / "hf" / "hub" / "models--org--tiny" / "snapshots" / "0123abc"
    shutil.copytree(tiny, snapshot)
    (tmp_path / "hf" / "hub" / "models--org--tiny" / "refs").mkdir()
    (tmp_path / "hf" / "hub" / "models--org--tiny" / "refs" / "main").write_text("0123abc")
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_CACHE", "HF_HOME")}
    env["HF_HOME"] = str(tmp_path / "hf")

    def evaluate(model):
        return subprocess.run([str(olive_host), "evaluate", "--model_name_or_path", model, "--metrics",
                               "perplexity"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)

    local, hub = evaluate(str(tiny)), evaluate("org/tiny")
    assert local.returncode == 0 and hub.returncode == 0, local.stderr + hub.stderr
    assert hub.stdout == local.stdout and "perplexity" in hub.stdout
    missing = evaluate("org/missing")
    looked = tmp_path / "hf" / "hub" / "models--org--missing" / "snapshots"
    assert missing.returncode != 0 and "org/missing not found" in missing.stderr and str(looked) in missing.stderr, \
        missing.stderr


def test_progress_bars_on_a_terminal_only(olive_host, servers, tmp_path):
    """create and download draw a bar in bytes on stderr when it is a terminal, and nothing when it is a pipe."""
    import pty
    server, _ = servers
    src = make_folder(tmp_path / "m", seed=9, big_mb=2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env["MLFLOW_TRACKING_URI"] = server.uri

    def on_pty(*args):
        master, slave = pty.openpty()
        proc = subprocess.Popen([str(olive_host), "model", *args], stdout=subprocess.PIPE, stderr=slave, env=env)
        os.close(slave)
        drawn = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
        assert proc.wait(timeout=120) == 0
        os.close(master)
        return drawn.decode(errors="replace")

    drawn = on_pty("create", "--name", "with-bar", "--version", "1", "--path", str(src))
    assert "uploading with-bar v1" in drawn and "MiB" in drawn, drawn
    drawn = on_pty("download", "--name", "with-bar", "--version", "1", "--output_path", str(tmp_path / "down"))
    assert "downloading with-bar v1" in drawn and "MiB" in drawn, drawn
    r = host(olive_host, "download", "--name", "with-bar", "--version", "1", "--output_path", str(tmp_path / "d2"),
             uri=server.uri)
    assert r.returncode == 0 and r.stderr == "", r.stderr
