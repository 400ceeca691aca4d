"""The explorer's API (docs/serve.md, "API"): each handler reads and checks its request, runs the model's part
as one job on the model's worker thread, and answers with the JSON the matching CLI command prints.

Checks that need no model (fields, limits, the prompt's length with the handlers' own tokenizer) happen before a
job is queued, so a bad request never waits behind others. Everything that touches the model or its tokenizer
runs inside a job.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import io
import json
import sys
import traceback
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, AsyncIterator, Awaitable, Callable

from starlette.requests import Request
from starlette.responses import FileResponse, Response, StreamingResponse

from ..errors import ExplainError
from ..latent.steering import NeuronEdit, Steering, build_edits
from ..method_registry import method_names
from .export import Exporter
from .fields import Fields, json_body
from .limits import Limits, RequestError, body_too_large
from .session import ServeSession
from .worker import ModelWorker

Handler = Callable[[Request], Awaitable[Response]]

ATLAS_HINT = ("start attnlrp serve with --atlas FILE.sqlite; build one with `attnlrp concepts build --corpus "
              "FILE --db FILE.sqlite` (same --model)")
#: image files the image view decodes (by their content, not their name)
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")
#: the largest image decoded (width × height), whatever its file size: a small PNG can hold a huge image
MAX_IMAGE_PIXELS = 4096 * 4096


def json_response(data: Any, status: int = 200) -> Response:
    """JSON as the CLI prints it (UTF-8, not ASCII-escaped); a non-finite number is an error, not invalid JSON."""
    return Response(json.dumps(data, ensure_ascii=False, allow_nan=False), status_code=status,
                    media_type="application/json", headers={"cache-control": "no-store"})


def error_response(message: str, status: int) -> Response:
    headers = {"retry-after": "1"} if status == 429 else {}
    response = json_response({"error": message}, status)
    response.headers.update(headers)
    return response


def failure_message(error: BaseException) -> tuple[str, int]:
    """The message and status for an exception raised by a request: the request's fault (4xx) or the model's."""
    from ..models import ModelLoadError

    if isinstance(error, RequestError):
        return str(error), error.status
    if isinstance(error, (ExplainError, ModelLoadError)):
        return str(error), 400
    traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    lines = str(error).strip().splitlines()
    detail = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return f"the model failed: {detail} (the server's terminal shows the traceback)", 500


def endpoint(handler: Handler) -> Handler:
    """Every failure of ``handler`` becomes ``{"error": …}`` with its status."""

    @functools.wraps(handler)
    async def wrapped(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as error:
            return error_response(*failure_message(error))

    return wrapped


async def read_body(request: Request, limit: int, *, image: bool = False) -> bytes:
    """The body, refused with 413 once it is over ``limit`` bytes (by its Content-Length, or while it arrives)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise body_too_large(int(declared), limit, image=image)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise body_too_large(None, limit, image=image)
        chunks.append(chunk)
    return b"".join(chunks)


@dataclass(frozen=True)
class Question:
    """What to explain: the common fields of /api/explain, /api/latents and /api/generate, checked."""

    prompt: str | list[int]
    method: str
    target: int | str | None = None
    contrast: int | str | None = None
    position: int | None = None
    add_bos: bool | None = None
    edits: tuple[NeuronEdit, ...] = ()

    def explain_kwargs(self) -> dict[str, Any]:
        return {"target": self.target, "contrast": self.contrast, "position": self.position, "add_bos": self.add_bos}


class Api:
    """The handlers, bound to one session, its worker, its limits and (optionally) an export folder."""

    def __init__(self, session: ServeSession, worker: ModelWorker, limits: Limits,
                 exporter: Exporter | None = None) -> None:
        self.session, self.worker, self.limits, self.exporter = session, worker, limits, exporter
        self._explainers: dict[str, Any] = {}  # method -> Explainer; used on the worker thread only

    # ------------------------------------------------------------------------------------------- helpers
    async def fields(self, request: Request, allowed: tuple[str, ...], call: str) -> Fields:
        return Fields(json_body(await read_body(request, self.limits.body_bytes)), allowed, call)

    def method(self, fields: Fields, *, units: bool = False) -> str:
        """The requested method (default attnlrp), one of the registry's (with neuron relevance if ``units``)."""
        name = fields.text("method", what="a method name") or "attnlrp"
        choices = method_names(has_unit_relevance=True) if units else method_names()
        if name not in choices:
            what = "methods with neuron and head relevance" if units else "methods"
            raise RequestError(f"unknown method {name!r}; the {what} are {', '.join(choices)}")
        return name

    def need_language_model(self, what: str, *, causal: bool = False) -> None:
        kind = self.session.kind
        if kind == "image-cls":
            raise RequestError(f"this server's model is an image classifier; {what} needs a language model "
                               "(use /api/explain-image)")
        if causal and kind != "causal-lm":
            raise RequestError(f"this server's model is a {kind} model; {what} needs a causal language model")

    def checked_prompt(self, prompt: str | list[int], add_bos: bool | None, *, new_tokens: int = 0) -> int:
        """The prompt's length in tokens, within ``--max-prompt-tokens`` (and with ``new_tokens`` within the
        model's context)."""
        length = len(self.session.tokenize(prompt, add_bos))
        self.limits.check_prompt(length)
        context = self.session.context
        if new_tokens and context is not None and length + new_tokens > context:
            raise RequestError(f"the prompt ({length} tokens) and {new_tokens} new tokens exceed the model's context "
                               f"of {context} tokens; shorten the prompt or generate fewer tokens")
        return length

    def edits(self, off: list[str], scale: dict[str, float], set_to: dict[str, float]) -> tuple[NeuronEdit, ...]:
        """Steering edits, parsed and counted against ``--max-steer-neurons`` (their ranges are checked on the
        model's thread, where the model is)."""
        self.limits.check_steer_neurons(len(off) + len(scale) + len(set_to))
        return tuple(build_edits(off, scale, set_to))

    def steer_field(self, fields: Fields) -> tuple[NeuronEdit, ...]:
        value = fields.data.get("steer")
        if value is None:
            return ()
        steer = Fields(value, ("off", "scale", "set"), "steer")
        edits = self.edits(steer.string_list("off"), steer.number_map("scale"), steer.number_map("set"))
        if edits:
            self.need_language_model("steering", causal=True)
        return edits

    def question(self, fields: Fields, *, units: bool = False) -> Question:
        self.need_language_model("explaining text")
        prompt, add_bos = fields.prompt(), fields.boolean("add_bos")
        self.checked_prompt(prompt, add_bos)
        return Question(prompt, self.method(fields, units=units), fields.token("target"), fields.token("contrast"),
                        fields.integer("position"), add_bos, self.steer_field(fields))

    def steering(self, edits: tuple[NeuronEdit, ...]) -> Any:
        """The edits as an active-able steering of the model (on the model's thread), or nothing to do."""
        return Steering(self.session.model, list(edits)) if edits else nullcontext()

    def explainer(self, method: str) -> Any:
        """One ``Explainer`` per method, made on first use (on the model's thread)."""
        if method not in self._explainers:
            from ..explain import Explainer

            self._explainers[method] = Explainer(self.session.model, self.session.tokenizer, method=method,
                                                 model_name=self.session.source)
        return self._explainers[method]

    def explain(self, question: Question, *, latents: bool = False) -> Any:
        """Explain on the model's thread (with the question's steering active): the ``Explanation``."""
        with self.steering(question.edits):
            return self.explainer(question.method).explain(question.prompt, latents=latents,
                                                           **question.explain_kwargs())

    # ------------------------------------------------------------------------------------------ handlers
    async def index(self, request: Request) -> Response:
        from .app import STATIC

        page = STATIC / "index.html"
        if not page.is_file():
            return error_response("the explorer's page is missing from this installation (static/index.html)", 404)
        return FileResponse(page, media_type="text/html; charset=utf-8")

    async def info(self, request: Request) -> Response:
        from ..cli import package_version

        s = self.session
        return json_response({
            "model": s.source, "kind": s.kind, "version": package_version(),
            "methods": list(method_names()), "default_method": "attnlrp",
            "neuron_methods": list(method_names(has_unit_relevance=True)),
            "layers": s.layers, "heads": s.heads, "neurons": s.neurons, "image": s.image_info(),
            "limits": self.limits.to_dict(),
            "atlas": s.atlas_info, **({} if s.atlas_info else {"atlas_hint": ATLAS_HINT}),
            "export": self.exporter is not None,
        })

    async def tokenize(self, request: Request) -> Response:
        fields = await self.fields(request, ("prompt", "token_ids", "add_bos"), "/api/tokenize")
        self.need_language_model("tokenizing")
        prepared = self.session.tokenize(fields.prompt(), fields.boolean("add_bos"))
        return json_response({"tokens": prepared.tokens, "token_ids": prepared.input_ids,
                              "special": prepared.special})

    async def explain_text(self, request: Request) -> Response:
        fields = await self.fields(request, ("prompt", "token_ids", "method", "target", "contrast", "position",
                                             "add_bos", "steer"), "/api/explain")
        question = self.question(fields)
        return json_response(await self.worker.run(lambda: self.explain(question).to_dict()))

    async def latents(self, request: Request) -> Response:
        fields = await self.fields(request, ("prompt", "token_ids", "method", "target", "contrast", "position",
                                             "add_bos", "top_k", "head", "steer"), "/api/latents")
        self.need_language_model("latent relevance")
        question = self.question(fields, units=True)
        top_k = fields.integer("top_k", 20, minimum=1)
        head = fields.int_list("head")
        if head is not None and len(head) != 2:
            raise RequestError("head must be [layer, head], e.g. [3, 1]")

        def job() -> dict[str, Any]:
            explanation = self.explain(question, latents=True)
            relevance = explanation.latents
            chosen = tuple(head) if head is not None else _top_head(relevance)
            summary = {**relevance.to_dict(top_k=top_k or 20),
                       "heads": [[float(v) for v in row] for row in relevance.head_totals().tolist()],
                       "head": list(chosen),
                       "head_tokens": [float(v) for v in relevance.head(*chosen).tolist()]}
            data = explanation.to_dict()
            data.pop("latents", None)
            return {"explanation": data, "latents": summary}

        return json_response(await self.worker.run(job))

    async def neurons(self, request: Request) -> Response:
        fields = await self.fields(request, ("prompt", "token_ids", "method", "top", "layer", "add_bos"),
                                   "/api/neurons")
        self.need_language_model("/api/neurons", causal=True)
        prompt, add_bos = fields.prompt(), fields.boolean("add_bos")
        self.checked_prompt(prompt, add_bos)
        method = self.method(fields, units=True)
        top, layer = fields.integer("top", 10, minimum=1), fields.integer("layer")

        def job() -> list[dict[str, Any]]:
            explanation = self.explainer(method).explain(prompt, latents=True, add_bos=add_bos)
            scores = explanation.latents.top_neurons(top or 10, layer=layer, order="positive")
            return [s.to_dict() for s in scores]

        return json_response(await self.worker.run(job))

    async def steer(self, request: Request) -> Response:
        fields = await self.fields(request, ("prompt", "off", "scale", "set", "max_new_tokens", "method", "target"),
                                   "/api/steer")
        self.need_language_model("steering", causal=True)
        prompt = fields.text("prompt", required=True, what="the text")
        assert prompt is not None
        new_tokens = fields.integer("max_new_tokens", 20, minimum=0) or 0
        self.limits.check_new_tokens(new_tokens)
        self.checked_prompt(prompt, None, new_tokens=new_tokens)
        edits = self.edits(fields.string_list("off"), fields.number_map("scale"), fields.number_map("set"))
        if not edits:
            raise RequestError('no neuron given: name at least one in off ["L:N"], scale {"L:N": F} or set '
                               '{"L:N": V} (/api/neurons lists the relevant ones)')
        method, target = self.method(fields), fields.token("target")

        def job() -> dict[str, Any]:
            from ..latent.steering import compare

            steering = Steering(self.session.model, list(edits))
            comparison = compare(self.session.model, self.session.tokenizer, prompt, steering,
                                 max_new_tokens=new_tokens)
            explained = comparison.reference_id if target is None else target
            explainer = self.explainer(method)
            before = explainer.explain(prompt, target=explained)
            with steering:
                after = explainer.explain(prompt, target=explained)
            return {"comparison": comparison.to_dict(),
                    "explanations": {"before": before.to_dict(), "after": after.to_dict()}}

        return json_response(await self.worker.run(job))

    async def generate(self, request: Request) -> Response:
        fields = await self.fields(request, ("prompt", "token_ids", "max_new_tokens", "method", "add_bos", "steer"),
                                   "/api/generate")
        self.need_language_model("generation", causal=True)
        prompt, add_bos = fields.prompt(), fields.boolean("add_bos")
        new_tokens = fields.integer("max_new_tokens", 16, minimum=1) or 16
        self.limits.check_new_tokens(new_tokens)
        self.checked_prompt(prompt, add_bos, new_tokens=new_tokens)
        method, edits = self.method(fields), self.steer_field(fields)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[tuple[str, Any] | None] = asyncio.Queue()

        def emit(event: tuple[str, Any] | None) -> None:  # from the model's thread
            loop.call_soon_threadsafe(events.put_nowait, event)

        def job() -> None:
            from ..generation import explain_generation

            try:
                with self.steering(edits):
                    explanation = explain_generation(
                        self.session.model, self.session.tokenizer, prompt, max_new_tokens=new_tokens,
                        method=method, model_name=self.session.source, add_bos=add_bos,
                        streamer=token_streamer(self.session.tokenizer, emit))
                emit(("relevance", explanation.to_dict()))
                emit(("done", {}))
            except Exception as error:
                emit(("error", {"error": failure_message(error)[0]}))
            finally:
                emit(None)

        future = self.worker.submit(job)  # a full queue answers 429 here, before the stream starts

        async def stream() -> AsyncIterator[str]:
            try:
                while (event := await events.get()) is not None:
                    yield server_sent_event(*event)
            finally:
                future.cancel()  # the client left before the job started: it never runs

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"cache-control": "no-store", "x-accel-buffering": "no"})

    async def atlas(self, request: Request) -> Response:
        path = self.session.atlas_path
        if path is None:
            return error_response(f"no atlas loaded: {ATLAS_HINT}", 404)
        layer, neuron = request.path_params["layer"], request.path_params["neuron"]
        top_text = request.query_params.get("top")
        if top_text is not None and (not top_text.isdigit() or int(top_text) < 1):
            raise RequestError(f"top must be a positive integer, got {top_text!r}")
        top = int(top_text) if top_text is not None else None

        def read() -> dict[str, Any]:
            from ..concepts import Atlas
            from ..concepts.render import concept_dict

            with Atlas.open(path) as atlas:
                groups = {kind: atlas.samples(layer, neuron, by=kind)[:top] for kind in ("actmax", "relmax")}
                return concept_dict(atlas.describe(), layer, neuron, groups)

        from ..concepts import AtlasError

        try:
            data = await asyncio.to_thread(read)  # SQLite reads, not the model: no need to queue
        except AtlasError as error:
            return error_response(str(error), 404)
        data["atlas"].pop("path", None)  # the page needs no path on this machine
        return json_response(data)

    async def explain_image(self, request: Request) -> Response:
        if self.session.kind != "image-cls":
            raise RequestError("this server's model is a language model; /api/explain-image needs an image "
                               "classifier (start attnlrp serve with --model FOLDER of a …ForImageClassification)")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        raw = await read_body(request, self.limits.upload_bytes, image=True)
        if content_type.startswith("image/"):
            params = request.query_params
            unknown = sorted(set(params) - {"method", "target", "token"})
            if unknown:
                raise RequestError(f"unknown query parameter {unknown[0]!r}: /api/explain-image takes method and target")
            fields = Fields({k: params[k] for k in ("method", "target") if k in params}, ("method", "target"),
                            "/api/explain-image")
            data = raw
        elif content_type == "application/json":
            fields = Fields(json_body(raw), ("image", "method", "target"), "/api/explain-image")
            data = data_url_bytes(fields.text("image", required=True, what="a data: URL of a PNG or JPEG") or "")
        else:
            raise RequestError("send the image file itself (Content-Type: image/png or image/jpeg) or JSON "
                               '{"image": "data:image/png;base64,…"}', status=415)
        method = self.method(fields)
        target: int | str | None = fields.text("target") if content_type.startswith("image/") else fields.token("target")
        if isinstance(target, str) and target.isdigit():
            target = int(target)
        pixels = decode_image(data, self.session)
        return json_response(await self.worker.run(lambda: self._explain_image(pixels, method, target)))

    def _explain_image(self, pixels: Any, method: str, target: int | str | None) -> dict[str, Any]:
        import torch

        from ..vision import ImageExplainer

        model = self.session.model
        explanation = ImageExplainer(model, method=method).explain(pixels, target=target)
        parameter = next(model.parameters())
        with torch.no_grad():
            logits = model(pixel_values=pixels.unsqueeze(0).to(parameter.device, parameter.dtype)).logits[0]
        class_id = int(explanation.target.token_id if explanation.target.token_id is not None else logits.argmax())
        probability = float(torch.softmax(logits.double(), dim=-1)[class_id])
        patches, pixel_map = explanation.patch_relevance, explanation.pixel_relevance
        return {"label": explanation.target.label if explanation.target.label is not None else str(class_id),
                "class_id": class_id, "probability": probability, "value": explanation.value,
                "method": explanation.method, "relevance": patches.tolist(), "height": int(patches.shape[0]),
                "width": int(patches.shape[1]), "pixels": pixel_map.tolist(),
                "image_height": int(pixel_map.shape[0]), "image_width": int(pixel_map.shape[1]),
                "ledger": explanation.ledger.to_dict(), "unhandled": list(explanation.unhandled)}

    async def export(self, request: Request) -> Response:
        raw = await read_body(request, self.limits.upload_bytes)  # a view holds whole explanations
        fields = Fields(json_body(raw), ("kind", "view"), "/api/export")
        if self.exporter is None:
            return error_response("exports to disk are off: start attnlrp serve with --export-dir DIR (or use the "
                                  "page's download buttons, which need no server)", 404)
        kind = fields.text("kind", required=True, what='"html" or "json"')
        view = fields.data.get("view")
        if not isinstance(view, dict):
            raise RequestError("view must be an object: the view to export (e.g. {\"explanation\": …})")
        exporter = self.exporter
        name = await asyncio.to_thread(lambda: exporter.write(kind or "", view))
        return json_response({"name": name})


def _top_head(relevance: Any) -> tuple[int, int]:
    best = relevance.top_heads(1, order="positive")[0]
    return best.layer, best.head


def server_sent_event(name: str, data: Any) -> str:
    """One SSE event; the JSON is on one line (``json.dumps`` escapes newlines), so one ``data:`` line."""
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"


def token_streamer(tokenizer: Any, emit: Callable[[tuple[str, Any]], None]) -> Any:
    """A transformers streamer for ``model.generate`` that emits a ``token`` event per generated token as it is
    generated (the first ``put`` is the prompt, which is skipped). Token text is ``decode([id])``, as in
    ``GenerationExplanation.tokens``."""
    from transformers.generation.streamers import BaseStreamer

    class TokenStreamer(BaseStreamer):
        def __init__(self) -> None:
            self.prompt_seen = False
            self.index = 0

        def put(self, value: Any) -> None:
            if not self.prompt_seen:
                self.prompt_seen = True
                return
            for token_id in value.reshape(-1).tolist():
                emit(("token", {"index": self.index, "id": int(token_id), "text": tokenizer.decode([token_id])}))
                self.index += 1

        def end(self) -> None:
            pass

    return TokenStreamer()


def data_url_bytes(url: str) -> bytes:
    """The bytes of a ``data:image/…;base64,…`` URL."""
    head, comma, payload = url.partition(",")
    if not comma or not head.startswith("data:image/") or not head.endswith(";base64"):
        raise RequestError("image must be a data: URL of an image, e.g. data:image/png;base64,iVBOR…")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise RequestError("the image's data: URL is not valid base64") from None


def decode_image(data: bytes, session: ServeSession) -> Any:
    """The image as the model's pixel values ``(channels, height, width)``: through the model's image processor
    when it has one, else converted to its channels, resized to its input size and scaled to [0, 1]."""
    from ..extras import require

    image_module = require("PIL.Image", "serve")
    try:
        image = image_module.open(io.BytesIO(data))
    except Exception:
        raise RequestError(f"the body is not an image file that can be read ({', '.join(IMAGE_FORMATS)})") from None
    if image.format not in IMAGE_FORMATS:
        raise RequestError(f"{image.format} images are not taken; send {', '.join(IMAGE_FORMATS)}")
    if image.width * image.height > MAX_IMAGE_PIXELS:
        raise RequestError(f"the image is {image.width}×{image.height} pixels; send at most {MAX_IMAGE_PIXELS} "
                           "pixels (it is resized to the model's input anyway)")
    info = session.image_info() or {}
    try:
        if session.image_processor is not None:
            return session.image_processor(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]
        import numpy as np
        import torch

        mode = "L" if info.get("channels") == 1 else "RGB"
        size = (info.get("width") or image.width, info.get("height") or image.height)
        array = np.asarray(image.convert(mode).resize(size, image_module.Resampling.BILINEAR), dtype=np.float32)
    except (OSError, ValueError) as error:
        raise RequestError(f"the image cannot be decoded: {error}") from None
    pixels = torch.from_numpy(array / 255.0)
    return pixels.unsqueeze(0) if pixels.dim() == 2 else pixels.permute(2, 0, 1)
