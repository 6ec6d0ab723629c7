"""The process `yayi serve` runs for the transformers engine: transformers serve's own application, with yayi's
request checks, defaults and answer cleanup in front of its chat route (`python -m yayi_cli.serve.app SETTINGS`).

Generation, batching and the OpenAI protocol stay the engine's: yayi builds the engine's app from its own parts
(`build_server`, its handlers, its model manager), replaces only the `/v1/chat/completions` route with one that
checks the request (serve/requests.py), hands it to the engine's chat handler, and cleans the answer
(serve/answers.py). The engine's batch samples one way for all its requests (its continuous batching takes one
generation config, and only the length and stop ids per request), so a request that samples differently, or
asks for what the batch drops (a repetition penalty), goes to the engine's unbatched path instead, beside it.
"""

import json
import sys
from dataclasses import asdict, dataclass
from typing import Any

from yayi_cli.serve.requests import ModelFacts, PlannedRequest, RequestError, Sampling, plan_request


GRACEFUL_SHUTDOWN_SECONDS = 5
"""How long uvicorn lets open streams finish after SIGTERM before it closes them."""


@dataclass(frozen=True)
class EngineSettings:
    """What the app needs, passed from `yayi serve` as one JSON argument."""

    name: str
    host: str
    port: int
    batching: bool
    template: str | None = None
    trust_remote_code: bool = False
    max_batch_tokens: int | None = None
    kv_cache_memory: float | None = None
    max_requests: int = 0

    def to_argument(self) -> str:
        return json.dumps(asdict(self))


class InFlight:
    """Requests being answered, with a bound beyond which new ones are told to come back (429)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.count = limit, 0

    def enter(self) -> None:
        if self.limit and self.count >= self.limit:
            raise RequestError(f"{self.count} requests are being answered, the most this server takes "
                               "(--max-requests): try again shortly", status=429, kind="rate_limit_error",
                               code="server_busy")
        self.count += 1

    def leave(self) -> None:
        self.count -= 1


def model_facts(settings: EngineSettings) -> ModelFacts:
    """The served model's tokenizer, template, context and generation config (no weights)."""
    from transformers import AutoConfig, GenerationConfig

    from yayi_cli.models.loading import load_for_task

    loaded = load_for_task(settings.name, template=settings.template, trust_remote_code=settings.trust_remote_code,
                           model_weights=False)
    try:
        generation = GenerationConfig.from_pretrained(settings.name)
    except OSError:
        generation = GenerationConfig.from_model_config(
            AutoConfig.from_pretrained(settings.name, trust_remote_code=settings.trust_remote_code))
    return ModelFacts(settings.name, loaded.prompt_tokenizer, loaded.context_length(), generation.to_diff_dict())


def batchable(planned: PlannedRequest, batch: Sampling | None) -> bool:
    """Whether the engine's batch answers this request as asked."""
    return batch is not None and planned.sampling == batch and planned.generation.get("repetition_penalty", 1.0) == 1.0


def error_response(error: RequestError) -> Any:
    from fastapi.responses import JSONResponse

    return JSONResponse(error.to_json(), status_code=error.status)


def build_app(settings: EngineSettings) -> Any:
    """transformers serve's app for the model, its chat route replaced by yayi's."""
    from fastapi import Request
    from transformers import ContinuousBatchingConfig
    from transformers.cli.serving.chat_completion import ChatCompletionHandler
    from transformers.cli.serving.completion import CompletionHandler
    from transformers.cli.serving.model_manager import ModelManager
    from transformers.cli.serving.response import ResponseHandler
    from transformers.cli.serving.server import build_server
    from transformers.cli.serving.systemone import SystemOneHandler
    from transformers.cli.serving.transcription import TranscriptionHandler
    from transformers.cli.serving.utils import GenerationState

    facts = model_facts(settings)
    manager = ModelManager(device="auto", dtype="auto", trust_remote_code=settings.trust_remote_code,
                           continuous_batching=settings.batching, force_model=settings.name)
    cb_settings = {"max_batch_tokens": settings.max_batch_tokens, "max_memory_percent": settings.kv_cache_memory}
    cb_config = ContinuousBatchingConfig(**{key: value for key, value in cb_settings.items() if value is not None})
    batched_state = GenerationState(continuous_batching=settings.batching, cb_config=cb_config)
    unbatched_state = GenerationState(continuous_batching=False)
    batched, unbatched = (ChatCompletionHandler(model_manager=manager, generation_state=state)
                          for state in (batched_state, unbatched_state))
    batch = Sampling.of(facts.generation) if settings.batching else None
    app = build_server(manager, batched, completion_handler=CompletionHandler(manager, unbatched_state),
                       response_handler=ResponseHandler(manager, unbatched_state),
                       transcription_handler=TranscriptionHandler(manager, unbatched_state),
                       systemone_handler=SystemOneHandler(manager, unbatched_state), generation_state=batched_state)
    app.router.routes = [route for route in app.router.routes if getattr(route, "path", None) != "/v1/chat/completions"]
    app.add_exception_handler(RequestError, lambda request, error: error_response(error))
    in_flight = InFlight(settings.max_requests)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, body: dict) -> Any:  # the annotations tell FastAPI what to pass
        planned = plan_request(body, facts)
        in_flight.enter()
        try:
            on_batch = batchable(planned, batch)
            handler = batched if on_batch else unbatched
            response = await handler.handle_request(planned.engine_body(batched=on_batch), request.state.request_id)
        except BaseException:
            in_flight.leave()
            raise
        return cleaned(response, planned, facts, in_flight)

    return app


def cleaned(response: Any, planned: PlannedRequest, facts: ModelFacts, in_flight: InFlight) -> Any:
    """The engine's response with the answer cleaned; the request leaves `in_flight` when its answer is sent."""
    from fastapi.responses import JSONResponse, StreamingResponse

    from yayi_cli.core.prompt import AnswerText
    from yayi_cli.serve.answers import clean_completion, clean_stream

    answer = AnswerText(facts.prompt_tokenizer.template.separator, planned.stops)
    if not isinstance(response, StreamingResponse):
        in_flight.leave()
        if response.status_code != 200:
            return response
        return JSONResponse(clean_completion(json.loads(response.body), answer), headers={
            key: value for key, value in response.headers.items() if key.lower().startswith("x-")})

    async def body() -> Any:
        try:
            async for piece in clean_stream(response.body_iterator, answer):
                yield piece
        finally:
            in_flight.leave()

    return StreamingResponse(body(), media_type="text/event-stream")


def run(settings: EngineSettings) -> None:
    import uvicorn

    app = build_app(settings)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="info",
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS)


if __name__ == "__main__":
    run(EngineSettings(**json.loads(sys.argv[1])))
