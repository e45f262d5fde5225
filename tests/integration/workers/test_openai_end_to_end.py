"""An OpenAI-Batch file as an OpenAI user writes it (bodies checked against the openai package's
request type) through the real thing: CLI → Redis → a Celery worker process with the tiny LLaVA
resident → PostgreSQL: per-request sampling, a seed that repeats, a token limit, text alone, a
json_object answer; and a model the deployment does not serve, refused at submit."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from openai.types.chat.completion_create_params import CompletionCreateParamsNonStreaming
from pydantic import TypeAdapter

from tests.helpers import write_images
from tests.integration.conftest import StartWorker
from tests.integration.conftest import run_cli as cli


def _line(custom_id: str, body: CompletionCreateParamsNonStreaming) -> str:
    TypeAdapter(CompletionCreateParamsNonStreaming).validate_python(body)
    return json.dumps(
        {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}
    )


def _body(model: str, image: str | None, **given: Any) -> CompletionCreateParamsNonStreaming:
    content: Any = [{"type": "text", "text": "Describe the product."}]
    if image is not None:
        content.append({"type": "image_url", "image_url": {"url": image}})
    return {
        "model": model,
        "messages": [{"role": "user", "content": content}],
        "max_completion_tokens": 12,
        **given,
    }


def test_an_openai_file_runs_as_each_request_asks_on_a_real_worker(
    service_env: dict[str, str], start_worker: StartWorker, tmp_path: Path
) -> None:
    write_images(tmp_path / "photos", 2)
    cli(service_env, "db", "upgrade")

    hosted = tmp_path / "hosted.jsonl"
    hosted.write_text(_line("a", _body("gpt-4o-mini", "photos/img000.png")) + "\n")
    refused = cli(service_env, "submit", "batch", str(hosted), check=False)
    assert refused.returncode == 2, refused.stderr
    assert "[model_not_served]" in refused.stderr and "served: tiny-llava" in refused.stderr

    seeded = {"temperature": 1.3, "seed": 7}
    lines = {
        "greedy": _body("tiny-llava", "photos/img000.png"),
        "seeded": _body("tiny-llava", "photos/img000.png", **seeded),
        "seeded-twin": _body("tiny-llava", "photos/img000.png", **seeded),
        "short": _body("tiny-llava", "photos/img001.png", max_completion_tokens=3),
        "text-alone": _body("tiny-llava", None),
        "object": _body(
            "tiny-llava", None, response_format={"type": "json_object"}, max_completion_tokens=4
        ),
    }
    batch = tmp_path / "requests.jsonl"
    batch.write_text("".join(_line(cid, body) + "\n" for cid, body in lines.items()))
    submitted = cli(service_env, "submit", "batch", str(batch), "--json")
    job_id = json.loads(submitted.stdout)["job_id"]

    worker = start_worker(service_env)
    done = cli(service_env, "status", job_id, "--watch", "--json", timeout=240)
    assert json.loads(done.stdout.strip().splitlines()[-1])["status"] == "completed", worker.log()

    exported = cli(service_env, "results", job_id, "--format", "openai").stdout
    by_id = {row["custom_id"]: row for row in map(json.loads, exported.splitlines())}
    assert set(by_id) == set(lines)

    def body(custom_id: str) -> dict[str, Any]:
        response = by_id[custom_id]["response"]
        assert response is not None and response["status_code"] == 200, by_id[custom_id]
        found: dict[str, Any] = response["body"]
        return found

    def text(custom_id: str) -> str:
        content: str = body(custom_id)["choices"][0]["message"]["content"]
        return content

    assert text("seeded") == text("seeded-twin")
    assert text("greedy")
    short = body("short")
    assert short["usage"]["completion_tokens"] == 3
    assert short["choices"][0]["finish_reason"] == "length"
    assert text("text-alone")
    # Four tokens never close an object of the random model: a truncation, never half an object.
    assert json.dumps(by_id["object"]).count("output_truncated") >= 1, by_id["object"]
