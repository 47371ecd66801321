"""AWS SSM Parameter Store as a settings layer (``ssm_path``; see :mod:`taskflow.config`).

Every parameter under the path becomes a nested setting: ``/taskflow/prod/worker/concurrency``
under ``/taskflow/prod/`` is ``worker.concurrency``. Values are parsed like environment
variables (``50`` is a number, ``true`` a boolean, ``["a", "b"]`` a list); a StringList is a
list of strings; SecureStrings are decrypted. Reading happens once, at start, before any
event loop runs, so the plain (synchronous) boto3 client is the right tool here.
"""

from __future__ import annotations

import re
from typing import Any


class SsmError(Exception):
    """The parameters could not be read; the message names the path or the endpoint."""


def _client(region: str, endpoint_url: str) -> Any:
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise SsmError("ssm_path is set but boto3 is not installed "
                       "(pip install 'taskflow[aws]')") from None
    config = Config(connect_timeout=5, read_timeout=10,
                    retries={"max_attempts": 3, "mode": "standard"})
    # A session of its own: credentials are resolved now, not cached from an earlier call.
    return boto3.session.Session().client(
        "ssm", region_name=region or None, endpoint_url=endpoint_url or None, config=config)


def _fetch(path: str, region: str, endpoint_url: str) -> list[dict[str, Any]]:
    from botocore.exceptions import (
        BotoCoreError, ClientError, EndpointConnectionError, NoCredentialsError,
        NoRegionError,
    )

    where = endpoint_url or "the regional SSM endpoint"
    try:
        client = _client(region, endpoint_url)
        pages = client.get_paginator("get_parameters_by_path").paginate(
            Path=path.rstrip("/") or "/", Recursive=True, WithDecryption=True)
        return [p for page in pages for p in page["Parameters"]]
    except NoRegionError:
        raise SsmError(f"SSM path {path}: no AWS region (set ssm_region or AWS_REGION)") from None
    except NoCredentialsError:
        raise SsmError(f"SSM path {path}: no AWS credentials found") from None
    except EndpointConnectionError as exc:
        raise SsmError(f"SSM path {path}: cannot reach {where}: {exc}") from None
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "error"), str(error.get("Message") or exc)
        # Some denials come back as an XML body the JSON protocol cannot parse.
        found = re.search(r"<Code>(.*?)</Code>.*?<Message>(.*?)</Message>", message, re.S)
        if found:
            code, message = found.groups()
        raise SsmError(f"SSM path {path}: {code} from {where}: {message}") from None
    except BotoCoreError as exc:
        raise SsmError(f"SSM path {path}: {type(exc).__name__} from {where}: {exc}") from None


def _value(parameter: dict[str, Any]) -> Any:
    from dynaconf.utils.parse_conf import parse_conf_data

    text = parameter["Value"]
    if parameter.get("Type") == "StringList":
        return [item.strip() for item in text.split(",")]
    if parameter.get("Type") == "SecureString":
        return text  # secrets are taken verbatim, never reinterpreted as numbers
    return parse_conf_data(text, tomlfy=True, box_settings={})


def load_parameters(path: str, *, region: str = "", endpoint_url: str = "") -> dict[str, Any]:
    """The parameters under ``path`` as a nested mapping (keys as stored; the caller
    normalises their case). A path with no parameters is an error: it is a typo far more
    often than an intentionally empty configuration."""
    if not path.startswith("/"):
        raise SsmError(f"SSM path {path!r} must start with '/'")
    prefix = path.rstrip("/") + "/"
    parameters = _fetch(path, region, endpoint_url)
    if not parameters:
        raise SsmError(f"SSM path {path}: no parameters found under it")
    tree: dict[str, Any] = {}
    for parameter in sorted(parameters, key=lambda p: p["Name"]):
        name = parameter["Name"]
        parts = [p for p in name[len(prefix):].split("/") if p]
        if not name.startswith(prefix) or not parts:
            continue
        node = tree
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise SsmError(f"SSM parameter {name}: {part} is both a value and a folder")
            node = child
        if isinstance(node.get(parts[-1]), dict):
            raise SsmError(f"SSM parameter {name} is both a value and a folder")
        node[parts[-1]] = _value(parameter)
    return tree
