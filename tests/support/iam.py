"""The IAM policies of `infra/iam/`, rendered as a deployment fills their placeholders."""

from __future__ import annotations

import json

from fruits_pipeline.lake import Lake
from fruits_pipeline.settings import REPO_ROOT

IAM = REPO_ROOT / "infra" / "iam"
ROLES = json.loads((IAM / "roles.json").read_text())
ACCOUNT = "123456789012"  # moto's default account, and the one render() puts in the policies
DEFAULT_LAKE = Lake("s3://fruits-lake/prod")


def render(file_name: str, lake: Lake = DEFAULT_LAKE) -> dict:
    text = (IAM / file_name).read_text()
    prefix = f"{lake.key_prefix}/" if lake.key_prefix else ""
    for name, value in {
        "AWS_ACCOUNT_ID": ACCOUNT,
        "LAKE_BUCKET": lake.bucket,
        "LAKE_PREFIX": prefix,
    }.items():
        text = text.replace(f"${{{name}}}", value)
    assert "${" not in text, f"{file_name} has an undocumented placeholder"
    return json.loads(text)
