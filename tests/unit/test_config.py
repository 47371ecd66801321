import pytest

from taskflow.config import ConfigError, RetryPolicy, load_settings, settings_from_dict


def test_settings_toml_loads_and_validates():
    settings = load_settings()
    assert settings.worker.queues == ("default",)
    assert settings.policy_for("http").max_attempts == 5  # task override
    assert settings.policy_for("noop") == settings.retry


def test_environment_variables_override_nested_keys(monkeypatch):
    monkeypatch.setenv("TASKFLOW_WORKER__CONCURRENCY", "7")
    monkeypatch.setenv("TASKFLOW_REDIS_URL", "redis://127.0.0.1:1/0")
    settings = load_settings()
    assert settings.worker.concurrency == 7
    assert settings.redis_url == "redis://127.0.0.1:1/0"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"worker": {"concurrency": "lots"}}, "'worker.concurrency': Expected `int`"),
        ({"worker": {"concurrency": 0}}, "'worker.concurrency': Expected `int` >= 1"),
        ({"worker": {"concurency": 3}}, "unknown field `concurency`"),
        ({"retry": {"jitter": 2}}, "'retry.jitter'"),
        ({"worker": {"queues": ["bad queue"]}}, "'worker.queues[0]'"),
        ({"worker": {"queues": []}}, "'worker.queues': Expected `array` of length >= 1"),
        ({"worker": {"lease_ttl": 5, "heartbeat_interval": 5}}, "heartbeat_interval"),
        ({"outbound": {"allowed_networks": ["10.0.0.0/33"]}}, "outbound.allowed_networks"),
        ({"worker": {"processes": -1}}, "'worker.processes': -1 is not a number of processes"),
        ({"worker": {"processes": "many"}}, "'worker.processes': 'many' is not a number"),
        ({"api": {"workers": "-2"}}, "'api.workers': '-2' is not a number of processes"),
    ],
)
def test_bad_values_fail_fast_naming_the_key(data, message):
    with pytest.raises(ConfigError, match=None) as info:
        settings_from_dict(data)
    assert message in str(info.value)


def test_bad_environment_value_names_the_key(monkeypatch):
    monkeypatch.setenv("TASKFLOW_MAINTENANCE__REAPER_INTERVAL", "-1")
    with pytest.raises(ConfigError, match="maintenance.reaper_interval"):
        load_settings()


def test_task_policy_overrides_only_what_it_sets():
    settings = settings_from_dict({"retry": {"base_delay": 3.0},
                                   "task_policies": {"x": {"max_attempts": 9, "timeout": 4}}})
    assert settings.policy_for("x") == RetryPolicy(max_attempts=9, base_delay=3.0)
    assert settings.timeout_for("x") == 4 and settings.timeout_for("y") == 0


def test_yaml_files_layer_on_top_and_task_names_keep_their_case(monkeypatch, tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("development:\n  worker:\n    concurrency: 33\n"
                     "  task_policies:\n    sendEmail:\n      max_attempts: 7\n")
    monkeypatch.setenv("TASKFLOW_SETTINGS_FILES", str(extra))
    monkeypatch.setenv("TASKFLOW_ENV", "development")
    monkeypatch.setenv("TASKFLOW_TASK_POLICIES__resize__MAX_ATTEMPTS", "10")
    settings = load_settings()
    assert settings.worker.concurrency == 33
    assert settings.policy_for("sendEmail").max_attempts == 7
    assert settings.policy_for("resize").max_attempts == 10


def test_an_environment_list_replaces_the_files_list(monkeypatch):
    monkeypatch.setenv("TASKFLOW_QUEUES", '["default", "emails", "reports"]')
    monkeypatch.setenv("TASKFLOW_WORKER__QUEUES", '["emails", "reports"]')
    assert load_settings().worker.queues == ("emails", "reports")  # not default + these


def test_the_ssm_path_must_be_absolute():
    with pytest.raises(ConfigError, match="'ssm_path'"):
        settings_from_dict({"ssm_path": "taskflow/prod"})
