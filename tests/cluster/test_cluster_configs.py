"""The cluster deliverables under cluster/: the AWS launcher YAML against the schema Ray ships and Ray's own
config preparation; the KubeRay manifests for the fields the operator requires; no secret literal anywhere, API
keys as files on worker nodes and never in an environment; the node roles' S3 rights (raw inputs read-only);
and the lining-up rule between the production configs' pools and the node types.

The lining-up rule, per pool (the engine's media tasks and model actor pools, the trainer's workers):
- a stage that runs its model on cuda asks for GPUs, every other stage for none;
- a fractional GPU divides 1 exactly and a whole one is an integer, so actors pack a node without stranded
  shares; a GPU actor's CPUs per GPU do not exceed the node's, or GPUs idle for want of CPUs;
- one actor fits on one worker node of its kind (GPU stages on GPU nodes, CPU stages on CPU-only nodes: the head
  offers no CPUs), and every pool of a kind at its maximum fits in that kind's nodes at their maximum.
"""

from __future__ import annotations

import copy
import fnmatch
import importlib.util
import json
import re
import stat
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml

from engine.core.config import EngineConfig, load_config
from engine.dataset.pipeline import model_pools, uses_vllm_batch, vllm_gpus_per_engine
from engine.models.backends.http import KEY_DIR_ENV
from train.core.config import SftConfig

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
AWS = CLUSTER / "aws" / "saber-cluster.yaml"
RAYCLUSTER = CLUSTER / "kuberay" / "raycluster.yaml"
RAYJOB = CLUSTER / "kuberay" / "rayjob-build-saber.yaml"
IMAGE_REPO_DIR = "/home/ray/saber"
API_KEY_SECRET = "saber-api-keys"


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


# -- the node types, as the autoscaler sees them ---------------------------------------------------------------
@dataclass(frozen=True)
class Node:
    name: str
    resources: dict[str, float]
    max_count: int

    @property
    def cpus(self) -> float:
        return self.resources.get("CPU", 0)

    @property
    def gpus(self) -> float:
        return self.resources.get("GPU", 0)


def _nodes(autoscaling_config: dict) -> list[Node]:
    head = autoscaling_config["head_node_type"]
    return [Node(name, t["resources"], 1 if name == head else t["max_workers"])
            for name, t in autoscaling_config["available_node_types"].items()]


def aws_nodes() -> list[Node]:
    return _nodes(load(AWS))


def kuberay_nodes() -> list[Node]:
    """Through Ray's own translation of the RayCluster into the in-tree autoscaler's config."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

    return _nodes(_derive_autoscaling_config_from_ray_cr(load(RAYCLUSTER)))


# -- what the production configs ask for ---------------------------------------------------------------------
@dataclass(frozen=True)
class Demand:
    pool: str
    keys: str  # the config keys that set it, for the failure message
    cpus: float
    gpus: float
    max_actors: int
    on_cuda: bool | None  # None: device "auto", either request is consistent
    accelerator: str | None = None  # an accelerator_type the actor insists on


def engine_config(name: str = "production.yaml", *overrides: str) -> EngineConfig:
    return load_config(EngineConfig, REPO / "jobs" / "configs" / name, list(overrides),
                       {"input": "s3://bucket/raw/", "output": "s3://bucket/saber/"})


def _on_cuda(config: EngineConfig, stage: str) -> bool | None:
    if stage == "asr":
        device = config.asr.device
    elif stage == "consistency" and config.consistency.method == "embedding":
        return False  # MiniLM on CPU (engine/models/backends/embeddings.py)
    else:
        backend = (config.consistency.judge if stage == "consistency" else getattr(config, stage)).backend
        if backend.kind != "local":
            return backend.kind == "vllm"
        device = backend.local.device
    return {"cpu": False, "cuda": True}.get(device)


def _pool_keys(stage: str) -> str:
    if stage == "asr":
        return "resources.asr_num_cpus/asr_num_gpus/asr_concurrency"
    return "consistency.judge.pool (consistency.pool for embedding)" if stage == "consistency" else f"{stage}.pool"


def engine_demands(config: EngineConfig) -> list[Demand]:
    res = config.resources
    demands = [Demand("media", "resources.media_num_cpus/media_concurrency", res.media_num_cpus, 0.0,
                      res.media_concurrency[1], False)]
    for stage, _, pool in model_pools(config):
        if uses_vllm_batch(config, stage):
            # ray.data.llm's engine actor: 1 CPU (Ray Data's default) and tensor x pipeline parallel GPUs.
            vllm = config.describe.backend.vllm
            demands.append(Demand(stage, "describe.backend.vllm (concurrency, engine_kwargs, accelerator_type)",
                                  1.0, vllm_gpus_per_engine(vllm), vllm.concurrency[1], True, vllm.accelerator_type))
        else:
            demands.append(Demand(stage, _pool_keys(stage), pool.num_cpus, pool.num_gpus, pool.concurrency[1],
                                  _on_cuda(config, stage)))
    if config.saber_test.enabled:  # after the stream, but sized as if it overlapped: 4 CPUs at most
        pool = config.saber_test.judge.pool
        demands.append(Demand("saber_test", "saber_test.judge.pool", pool.num_cpus, pool.num_gpus,
                              pool.concurrency[1], config.saber_test.judge.backend.kind == "vllm" or None))
    return demands


def trainer_demands(config: SftConfig) -> list[Demand]:
    dist = config.distributed
    return [Demand("train workers", "distributed.num_workers/cpus_per_worker/use_gpu", dist.cpus_per_worker,
                   1.0 if dist.use_gpu else 0.0, dist.num_workers, dist.use_gpu),
            # SedPreprocessor actors (train/data/sed_data.py): ActorPoolStrategy default of 1 CPU each.
            Demand("train preprocessing", "data.preprocess_concurrency", 1.0, 0.0, config.data.preprocess_concurrency,
                   False)]


# -- the rule ------------------------------------------------------------------------------------------------
def _actor_problems(d: Demand, kind: list[Node]) -> list[str]:
    problems = []
    if d.on_cuda is True and d.gpus == 0:
        problems.append(f"{d.pool}: runs on cuda but asks for no GPU ({d.keys})")
    if d.on_cuda is False and d.gpus > 0:
        problems.append(f"{d.pool}: a CPU stage asks for {d.gpus} GPU ({d.keys})")
    if d.gpus and not (d.gpus >= 1 and float(d.gpus).is_integer() or d.gpus < 1 and (1 / d.gpus).is_integer()):
        problems.append(f"{d.pool}: {d.gpus} GPU per actor leaves stranded shares ({d.keys})")
    if not any(n.cpus >= d.cpus and n.gpus >= d.gpus for n in kind):
        problems.append(f"{d.pool}: one actor ({d.cpus} CPU, {d.gpus} GPU) fits no node of its kind ({d.keys})")
    if d.gpus and kind and d.cpus / d.gpus > max(n.cpus / n.gpus for n in kind):
        problems.append(f"{d.pool}: {d.cpus / d.gpus:g} CPUs per GPU exceed the GPU nodes' ratio ({d.keys})")
    if d.accelerator and not any(n.resources.get(f"accelerator_type:{d.accelerator}") for n in kind):
        problems.append(f"{d.pool}: asks for accelerator_type:{d.accelerator}, which no node type of its kind "
                        f"declares, so the autoscaler never launches one ({d.keys})")
    return problems


def lining_up_problems(demands: list[Demand], nodes: list[Node]) -> list[str]:
    gpu_nodes = [n for n in nodes if n.gpus > 0]
    cpu_nodes = [n for n in nodes if n.gpus == 0 and n.cpus > 0]
    problems = []
    for d in demands:
        problems += _actor_problems(d, gpu_nodes if d.gpus else cpu_nodes)
    for label, kind, pools in (("GPU", gpu_nodes, [d for d in demands if d.gpus]),
                               ("CPU", cpu_nodes, [d for d in demands if not d.gpus])):
        for resource in ("cpus", "gpus"):
            need = sum(d.max_actors * getattr(d, resource) for d in pools)
            have = sum(n.max_count * getattr(n, resource) for n in kind)
            if need > have:
                problems.append(f"{label} pools at their maximum need {need:g} {resource} but the {label} nodes "
                                f"offer {have:g}: {', '.join(f'{d.pool} ({d.keys})' for d in pools)}")
    return problems


NODE_SOURCES = {"aws": aws_nodes, "kuberay": kuberay_nodes}
ENGINE_CONFIGS = ["production.yaml", "production_open.yaml"]


@pytest.mark.parametrize("source", NODE_SOURCES)
@pytest.mark.parametrize("config_name", ENGINE_CONFIGS)
def test_production_engine_pools_line_up_with_the_node_types(config_name, source):
    assert lining_up_problems(engine_demands(engine_config(config_name)), NODE_SOURCES[source]()) == []


@pytest.mark.parametrize("source", NODE_SOURCES)
def test_production_trainer_lines_up_with_the_gpu_nodes(source):
    config = load_config(SftConfig, REPO / "jobs/configs/sft_production.yaml", [],
                         {"data": {"sed": "s3://bucket/saber/sed"}, "storage_path": "s3://bucket/runs"})
    nodes = NODE_SOURCES[source]()
    assert lining_up_problems(trainer_demands(config), nodes) == []
    # Ray Train places one worker group; all 8 workers on one node keeps NCCL on NVLink.
    gpu = max(nodes, key=lambda n: n.gpus)
    workers = config.distributed.num_workers
    assert workers <= gpu.gpus and workers * config.distributed.cpus_per_worker <= gpu.cpus


@pytest.mark.parametrize(("override", "complaint"), [
    ("annotate.pool.num_gpus=1", "annotate: a CPU stage asks for 1.0 GPU"),
    ("consistency.judge.pool.num_gpus=1", "consistency: a CPU stage asks for 1.0 GPU"),
    ("resources.asr_num_gpus=0", "asr: runs on cuda but asks for no GPU"),
    ("resources.asr_num_gpus=0.3", "asr: 0.3 GPU per actor leaves stranded shares"),
    ("resources.asr_num_cpus=200", "asr: one actor (200.0 CPU, 0.5 GPU) fits no node"),
    ("resources.asr_num_cpus=16", "asr: 32 CPUs per GPU exceed the GPU nodes' ratio"),
    ("describe.backend.vllm.accelerator_type=H100", "describe: asks for accelerator_type:H100"),
    ("describe.backend.vllm.concurrency=[1,64]", "GPU pools at their maximum need 72 gpus"),
    ("resources.media_concurrency=[8,1024]", "CPU pools at their maximum need 1037 cpus"),
])
def test_the_lining_up_rule_catches_each_kind_of_mismatch(override, complaint):
    problems = lining_up_problems(engine_demands(engine_config("production.yaml", override)), aws_nodes())
    assert any(p.startswith(complaint) for p in problems), problems


# -- AWS cluster launcher ------------------------------------------------------------------------------------
def test_launcher_yaml_validates_against_the_schema_ray_ships():
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(load(AWS), schema)


def test_launcher_yaml_passes_rays_own_preparation():
    """What `ray up` does before touching AWS: fill defaults, merge setup commands, validate."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(load(AWS)))
    validate_config(prepared)
    types = prepared["available_node_types"]
    assert types["head"]["max_workers"] == 0
    assert types["gpu_a100"]["min_workers"] == 0 and types["cpu"]["min_workers"] == 0
    assert prepared["worker_setup_commands"][0] == prepared["setup_commands"][0]  # the token reaches workers too


def test_launcher_head_runs_no_tasks_and_everything_stays_private():
    config = load(AWS)
    head_start = " ".join(config["head_start_ray_commands"])
    worker_start = " ".join(config["worker_start_ray_commands"])
    assert config["available_node_types"]["head"]["resources"] == {"CPU": 0} and "--num-cpus=0" in head_start
    assert "--dashboard-host=127.0.0.1" in head_start
    assert "RAY_AUTH_MODE=token" in head_start and "RAY_AUTH_MODE=token" in worker_start
    assert config["provider"]["use_internal_ips"] is True and "security_group" not in config["provider"]
    assert 0 < config["idle_timeout_minutes"] <= 30
    for name, node_type in config["available_node_types"].items():
        node = node_type["node_config"]
        assert node["SecurityGroupIds"] and node["SubnetIds"], name  # no auto-created group opening SSH to all
        assert "Name" in node["IamInstanceProfile"], name  # S3 and Secrets Manager through the instance role
        assert node["MetadataOptions"]["HttpTokens"] == "required", name


# -- KubeRay ------------------------------------------------------------------------------------------------
def _containers(pod_template: dict) -> list[dict]:
    return pod_template["spec"]["containers"]


def test_raycluster_has_what_the_operator_requires():
    doc = load(RAYCLUSTER)
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCluster") and doc["metadata"]["name"]
    spec = doc["spec"]
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True and spec["autoscalerOptions"]["idleTimeoutSeconds"] > 0
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    assert head["serviceType"] == "ClusterIP" and head["rayStartParams"]["num-cpus"] == "0"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"cpu", "gpu-a100x8"}
    for group in groups.values():
        assert 0 == group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert isinstance(group["rayStartParams"], dict)
    for template in [head["template"], *(g["template"] for g in groups.values())]:
        for container in _containers(template):
            assert container["image"] and container["resources"]["requests"] == container["resources"]["limits"]
    gpu = _containers(groups["gpu-a100x8"]["template"])[0]["resources"]
    assert gpu["requests"]["nvidia.com/gpu"] == gpu["limits"]["nvidia.com/gpu"] == "8"
    assert "nvidia.com/gpu" not in _containers(groups["cpu"]["template"])[0]["resources"]["limits"]


def test_raycluster_becomes_a_valid_config_for_the_in_tree_autoscaler():
    """Ray's own translation of the RayCluster (what the autoscaler sidecar runs on), then Ray's validation."""
    from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr
    from ray.autoscaler._private.util import validate_config

    config = _derive_autoscaling_config_from_ray_cr(load(RAYCLUSTER))
    validate_config(config)
    assert config["idle_timeout_minutes"] == 10
    types = config["available_node_types"]
    assert types["headgroup"]["resources"]["CPU"] == 0
    cpu = types["cpu"]["resources"]
    assert cpu["CPU"] == 30 and "GPU" not in cpu
    assert {k: types["gpu-a100x8"]["resources"][k] for k in ("CPU", "GPU", "accelerator_type:A100")} == {
        "CPU": 90, "GPU": 8, "accelerator_type:A100": 1}


def test_rayjob_runs_build_saber_on_the_same_cluster_spec():
    doc = load(RAYJOB)
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayJob")
    spec = doc["spec"]
    assert spec["entrypoint"].startswith("python jobs/build_saber.py --config jobs/configs/production.yaml ")
    assert spec["rayClusterSpec"] == load(RAYCLUSTER)["spec"]
    assert spec["submissionMode"] == "K8sJobMode" and spec["shutdownAfterJobFinishes"] is True
    runtime_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert runtime_env["working_dir"] == IMAGE_REPO_DIR


def test_every_manifest_parses_and_lives_in_the_saber_namespace():
    kinds = set()
    for path in sorted((CLUSTER / "kuberay").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            kinds.add(doc["kind"])
            assert doc["metadata"]["namespace"] == "saber", path.name
    assert kinds == {"RayCluster", "RayJob", "ServiceAccount", "NetworkPolicy", "PodMonitor"}
    for path in CLUSTER.rglob("*.json"):
        json.loads(path.read_text())
    for path in (CLUSTER / "monitoring").rglob("*.yml"):
        assert yaml.safe_load(path.read_text()), path.name


def test_image_holds_the_repo_where_the_configs_expect_it():
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"WORKDIR {IMAGE_REPO_DIR}" in dockerfile
    assert f"rayproject/ray:{ray.__version__}-" in dockerfile and f"ray[llm]=={ray.__version__}" in dockerfile
    # The image installs the lock the Makefile installs, the torch pair first.
    assert "-c /tmp/requirements.lock torch torchvision" in dockerfile
    assert "-r requirements.lock" in dockerfile and "-r $(LOCK)" in (REPO / "Makefile").read_text()
    assert f"python {IMAGE_REPO_DIR}/cluster/aws/fetch_secrets.py" in " ".join(load(AWS)["setup_commands"])
    ignored = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert {".git", ".venv", ".cache", "outputs", ".env", "*.pem"} <= set(ignored)


# -- secrets --------------------------------------------------------------------------------------------------
_KEY_LITERALS = {
    "OpenAI-style key": re.compile(r"\bsk-[A-Za-z0-9_-]{20,}"),
    "Google API key": re.compile(r"\bAIza[0-9A-Za-z_-]{30,}"),
    "AWS access key id": re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "hex token": re.compile(r"\b[0-9a-fA-F]{32,}\b"),
    # A variable whose value is an absolute path (SABER_API_KEY_DIR: where the key files are) holds no secret.
    "secret env value": re.compile(r"(?i)name:\s*[\"']?\w*(KEY|TOKEN|SECRET|PASSWORD)\w*[\"']?[,\s]+value:"
                                   r"(?!\s*[\"']?/)"),
    "assigned secret": re.compile(r"(?i)\b[\w-]*(api[_-]?key|_token|password|secret_access_key)[\"']?\s*[:=]\s*"
                                  r"[\"']?(?![$~/{\"'\s])[^\s\"';,}]{8,}"),
}


def key_literals(text: str) -> list[str]:
    found = [f"{name}: {m.group()}" for name, rx in _KEY_LITERALS.items() for m in rx.finditer(text)]
    # A long run of mixed-case letters and digits looks random: a key or token, not a word or a path.
    found += [f"random-looking: {w}" for w in re.findall(r"[A-Za-z0-9+_-]{32,}", text)
              if re.search(r"\d", w) and re.search(r"[a-z]", w) and re.search(r"[A-Z]", w)]
    return found


def test_no_key_looking_literal_in_any_cluster_file():
    files = [p for p in CLUSTER.rglob("*") if p.is_file()]
    assert len(files) > 10
    found = {str(p.relative_to(REPO)): hits for p in files if (hits := key_literals(p.read_text()))}
    assert found == {}


def test_the_key_literal_check_lets_a_path_to_key_files_pass():
    assert key_literals("  - {name: SABER_API_KEY_DIR, value: /etc/saber/api-keys}") == []


@pytest.mark.parametrize("planted", [
    "OPENAI_API_KEY=sk-proj-abcdefghijklmnopqrstuvwx", "key: AIzaSyA1234567890abcdefghijklmnopqrstu",
    "aws_access_key_id = AKIAIOSFODNN7EXAMPLE", "RAY_AUTH_TOKEN: 0123456789abcdef0123456789abcdef",
    "  - {name: GEMINI_API_KEY, value: 'not-a-real-key-but-long'}", "GEMINI_API_KEY: hunter2hunter2",
    "token Zx9QkLm3Rt7VbN2pWs8YhJ4dFg6KcX1aE0",
])
def test_the_key_literal_check_catches_planted_keys(planted):
    assert key_literals(planted)


def _mounts_of_the_key_secret(pod_template: dict) -> list[tuple[dict, dict]]:
    """(container, its volumeMount) for every mount of a volume made from the API-key Secret."""
    volumes = {v["name"]: v for v in pod_template["spec"].get("volumes", [])}
    return [(c, m) for c in _containers(pod_template) for m in c.get("volumeMounts", [])
            if volumes.get(m["name"], {}).get("secret", {}).get("secretName") == API_KEY_SECRET]


def test_kubernetes_api_keys_are_files_in_worker_pods_never_env():
    """The API-key Secret reaches worker containers as a read-only volume of owner/group-only files, with the
    folder's path (not a key) in SABER_API_KEY_DIR; no container of any pod takes a value from it as env."""
    for path in (RAYCLUSTER, RAYJOB):
        text = path.read_text()
        # Any credential-named variable that is set at all comes from a Secret (the Ray token: authOptions).
        for env in re.findall(r"name: (\w*(?:KEY|TOKEN|SECRET|PASSWORD)\w*)", text):
            if env != KEY_DIR_ENV:
                assert re.search(rf"- name: {env}\n\s+valueFrom: {{secretKeyRef:", text), (path.name, env)
        spec = load(path)["spec"]
        spec = spec.get("rayClusterSpec", spec)
        templates = {"head": spec["headGroupSpec"]["template"],
                     **{g["groupName"]: g["template"] for g in spec["workerGroupSpecs"]}}
        for name, template in templates.items():
            for container in _containers(template):
                refs = [e["valueFrom"] for e in container.get("env", []) if "valueFrom" in e]
                assert not any(r.get("secretKeyRef", {}).get("name") == API_KEY_SECRET for r in refs), name
                assert not any(f.get("secretRef", {}).get("name") == API_KEY_SECRET
                               for f in container.get("envFrom", [])), name
            mounts = _mounts_of_the_key_secret(template)
            if name == "head":
                assert mounts == [], "the head runs no actors: it never holds the keys"
                continue
            assert [c["name"] for c, _ in mounts] == [c["name"] for c in _containers(template)], name
            volume = next(v for v in template["spec"]["volumes"] if v.get("secret", {}).get("secretName"))
            mode = volume["secret"]["defaultMode"]
            assert mode & 0o077 == mode & 0o040 and not mode & 0o222, f"{name}: mode {mode:o}"
            assert template["spec"]["securityContext"]["fsGroup"] == 100, name  # the image's `ray` user's group
            for container, mount in mounts:
                assert mount["readOnly"] is True and not mount["mountPath"].startswith(IMAGE_REPO_DIR), name
                env = {e["name"]: e.get("value") for e in container["env"]}
                assert env[KEY_DIR_ENV] == mount["mountPath"], name
        submitter_env = yaml.safe_load(doc["spec"]["runtimeEnvYAML"]).get("env_vars", {}) \
            if (doc := load(path))["kind"] == "RayJob" else {}
        assert not key_literals(json.dumps(submitter_env)) and not any(
            re.search("KEY|TOKEN|SECRET|PASSWORD", n) for n in submitter_env), submitter_env


def test_aws_api_keys_stay_in_files_out_of_rays_environment():
    """Workers fetch the keys into a folder and start Ray with only its path; nothing sources or exports a key,
    and the head (which runs the job drivers) never fetches them."""
    config = load(AWS)
    prepared = copy.deepcopy(config)
    from ray.autoscaler._private.util import prepare_config

    prepared = prepare_config(prepared)
    worker_setup = " ".join(prepared["worker_setup_commands"])
    head_setup = " ".join(prepared["head_setup_commands"])
    worker_start = " ".join(config["worker_start_ray_commands"])
    every_command = " ".join(worker_setup.split() + head_setup.split() + worker_start.split()
                             + " ".join(config["head_start_ray_commands"]).split())
    fetched = re.search(r"fetch_secrets\.py keys .*--secret-id saber/api-keys --out (\S+)", worker_setup)
    assert fetched, worker_setup
    assert f"{KEY_DIR_ENV}={fetched.group(1).replace('~', '$HOME')}" in worker_start
    assert "api-keys" not in head_setup and KEY_DIR_ENV not in " ".join(config["head_start_ray_commands"])
    assert not re.search(r"set -a|(^|[;&|(]\s*|\s)(\.|source)\s+\S|\.env\b", every_command), every_command
    assert not re.search(r"(GEMINI|OPENAI)_API_KEY", every_command)


def _fetch_secrets_module():
    spec = importlib.util.spec_from_file_location("fetch_secrets", CLUSTER / "aws" / "fetch_secrets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _FakeSecretsManager:
    def __init__(self, secrets: dict[str, str]) -> None:
        self.secrets = secrets

    def get_secret_value(self, SecretId: str) -> dict:  # noqa: N803 - boto3's argument name
        return {"SecretString": self.secrets[SecretId]}


def test_fetch_secrets_writes_owner_only_files(tmp_path, capsys):
    fetch = _fetch_secrets_module()
    client = _FakeSecretsManager({"tok": "abc123\n", "keys": json.dumps({"OPENAI_API_KEY": "x y'z", "A_B": 1})})
    assert fetch.main(["token", "--secret-id", "tok", "--out", str(tmp_path / "ray" / "auth_token")], client) == 0
    assert fetch.main(["keys", "--secret-id", "keys", "--out", str(tmp_path / "keys")], client) == 0
    assert (tmp_path / "ray" / "auth_token").read_text() == "abc123\n"
    keys = tmp_path / "keys"
    assert {p.name: p.read_text() for p in keys.iterdir()} == {"A_B": "1\n", "OPENAI_API_KEY": "x y'z\n"}
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    for path in (tmp_path / "ray" / "auth_token", keys / "A_B", keys / "OPENAI_API_KEY"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "x y'z" not in capsys.readouterr().err
    # Rotation: a key dropped from the secret leaves the node; a file that is not a key name stays.
    (keys / "notes.txt").write_text("mine")
    client.secrets["keys"] = json.dumps({"OPENAI_API_KEY": "new"})
    assert fetch.main(["keys", "--secret-id", "keys", "--out", str(keys)], client) == 0
    assert {p.name: p.read_text() for p in keys.iterdir()} == {"OPENAI_API_KEY": "new\n", "notes.txt": "mine"}


@pytest.mark.parametrize("name", ["../escape", "BAD NAME; rm -rf", "lower", ".hidden"])
def test_fetch_secrets_refuses_names_unfit_for_a_file_without_showing_values(name):
    with pytest.raises(ValueError, match="not key names") as caught:
        _fetch_secrets_module().key_files(json.dumps({"GOOD": "sk-value-1", name: "sk-value-2"}))
    assert name in str(caught.value) and "sk-value" not in str(caught.value)


def test_fetch_secrets_refuses_an_empty_key():
    with pytest.raises(ValueError, match=r"empty keys: \['EMPTY'\]"):
        _fetch_secrets_module().key_files(json.dumps({"EMPTY": " ", "GOOD": "sk-value"}))


# -- S3 rights of the node roles --------------------------------------------------------------------------------
IAM = CLUSTER / "aws" / "iam"
# The bucket layout of cluster/OPERATIONS.md: raw inputs, and where builds, preferences, runs and results go.
OUTPUT_PREFIXES = ["saber/", "saber-prefs/", "runs/", "results/"]
WRITE_ACTIONS = ["s3:PutObject", "s3:DeleteObject", "s3:DeleteObjectVersion", "s3:PutObjectAcl",
                 "s3:PutObjectTagging", "s3:DeleteObjectTagging", "s3:AbortMultipartUpload", "s3:RestoreObject",
                 "s3:PutObjectRetention", "s3:PutObjectLegalHold", "s3:ReplicateObject", "s3:ReplicateDelete"]


def _listed(statement: dict, field: str) -> list[str] | None:
    value = statement.get(field)
    return [value] if isinstance(value, str) else value


def _glob(patterns: list[str], value: str, fold: bool) -> bool:
    """IAM wildcards: * any run, ? one character; actions compare case-insensitively."""
    return any(fnmatch.fnmatchcase(value.lower() if fold else value, p.lower() if fold else p) for p in patterns)


def _applies(statement: dict, action: str, resource: str) -> bool:
    actions, not_actions = _listed(statement, "Action"), _listed(statement, "NotAction")
    resources, not_resources = _listed(statement, "Resource"), _listed(statement, "NotResource")
    acts = _glob(actions, action, True) if actions is not None else not _glob(not_actions, action, True)
    on = _glob(resources, resource, False) if resources is not None else not _glob(not_resources, resource, False)
    return acts and on


def iam_allows(policy: dict, action: str, resource: str) -> bool:
    """An explicit Deny wins; a conditional Deny is not counted on (it may not apply), a conditional Allow is."""
    applying = [s for s in policy["Statement"] if _applies(s, action, resource)]
    if any(s["Effect"] == "Deny" and "Condition" not in s for s in applying):
        return False
    return any(s["Effect"] == "Allow" for s in applying)


def _build_prefixes() -> tuple[str, str]:
    """The bucket and raw-input prefix, and the output prefix, as the RayJob's build passes them."""
    entry = load(RAYJOB)["spec"]["entrypoint"]
    raw = re.search(r"--input s3://(\S+)", entry).group(1)
    out = re.search(r"--output s3://(\S+)", entry).group(1)
    return raw, out


def raw_write_rights(policy: dict) -> list[str]:
    raw, _ = _build_prefixes()
    return [a for a in WRITE_ACTIONS if iam_allows(policy, a, f"arn:aws:s3:::{raw}clip-0001.mp4")]


@pytest.mark.parametrize("role", ["worker", "head"])
def test_node_roles_read_raw_inputs_and_write_only_the_output_prefixes(role):
    policy = json.loads((IAM / f"{role}-policy.json").read_text())
    raw, out = _build_prefixes()
    bucket = raw.split("/")[0]
    assert raw_write_rights(policy) == []
    assert iam_allows(policy, "s3:GetObject", f"arn:aws:s3:::{raw}clip-0001.mp4")
    assert iam_allows(policy, "s3:ListBucket", f"arn:aws:s3:::{bucket}")
    assert out.startswith(f"{bucket}/") and out[len(bucket) + 1:] in OUTPUT_PREFIXES
    for prefix in OUTPUT_PREFIXES:  # resume moves and Ray Train's checkpoint rotation delete there
        for action in ("s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"):
            assert iam_allows(policy, action, f"arn:aws:s3:::{bucket}/{prefix}x/part-0.parquet"), (prefix, action)
    # Elsewhere in the bucket (not an output): read, never write.
    assert not iam_allows(policy, "s3:PutObject", f"arn:aws:s3:::{bucket}/elsewhere/x")


def test_the_raw_input_check_catches_write_rights_and_the_deny_outlasts_a_broad_grant():
    worker = json.loads((IAM / "worker-policy.json").read_text())
    raw, _ = _build_prefixes()
    bucket = raw.split("/")[0]
    old = {"Statement": [{"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetObject", "s3:PutObject",
                                                        "s3:DeleteObject"],
                          "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]}]}
    assert raw_write_rights(old) == ["s3:PutObject", "s3:DeleteObject"]
    everything = {"Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}
    assert raw_write_rights(everything) == WRITE_ACTIONS
    assert raw_write_rights({"Statement": everything["Statement"] + worker["Statement"]}) == []
