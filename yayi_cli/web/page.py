"""The chat page: Gradio's chat components on top of a `ChatClient`, its labels in English and Chinese (the browser's
language picks)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import gradio as gr

from yayi_cli.web.client import ChatClient, PageError, Sampling, as_messages, as_text


LABELS = {
    "en": {"chat": "Chat", "message": "Message", "placeholder": "Type a message; Enter sends it", "send": "Send",
           "stop": "Stop", "clear": "Clear", "settings": "Settings", "system": "System text",
           "temperature": "Temperature (0: greedy)", "top_p": "Top-p", "max_new_tokens": "Maximum new tokens"},
    "zh": {"chat": "对话", "message": "消息", "placeholder": "输入消息，回车发送", "send": "发送", "stop": "停止",
           "clear": "清空", "settings": "设置", "system": "系统提示", "temperature": "温度（0：贪心解码）", "top_p": "Top-p",
           "max_new_tokens": "最大生成长度"},
}
ELEMENT_IDS = ("model-name", "chat", "message", "send", "stop", "clear", "status", "system", "temperature", "top-p",
               "max-new-tokens")
"""The page's elements by id: stable handles for the browser test (and anyone scripting the page)."""


@dataclass(frozen=True)
class PageSettings:
    """What the page starts with."""

    title: str
    system: str
    sampling: Sampling
    max_tokens_limit: int = 4096


def build_page(client: ChatClient, settings: PageSettings) -> tuple[gr.Blocks, gr.I18n]:
    """The page's Blocks and the I18n its labels come from (pass it to `launch`)."""
    i18n = gr.I18n(**LABELS)
    stopping: set[str] = set()
    """Sessions whose Stop was pressed: their answer ends at its next piece. (Gradio's own `cancels=` sometimes
    leaves an "Error" badge on the chat in 6.31; an answer that ends by itself leaves none.)"""
    with gr.Blocks(title=settings.title, analytics_enabled=False) as page:
        gr.Markdown(f"### {settings.title}", elem_id="model-name")
        chat = gr.Chatbot(label=i18n("chat"), elem_id="chat", height=460)
        status = gr.Markdown("", elem_id="status")
        with gr.Row():
            message = gr.Textbox(show_label=False, placeholder=i18n("placeholder"), elem_id="message", scale=8, lines=1)
            send = gr.Button(i18n("send"), variant="primary", elem_id="send", scale=1)
            stop = gr.Button(i18n("stop"), variant="stop", elem_id="stop", scale=1, visible=False)
            clear = gr.Button(i18n("clear"), elem_id="clear", scale=1)
        with gr.Accordion(i18n("settings"), open=True):
            system = gr.Textbox(settings.system, label=i18n("system"), elem_id="system", lines=2)
            temperature = gr.Slider(0, 2, value=settings.sampling.temperature, step=0.05, label=i18n("temperature"),
                                    elem_id="temperature")
            top_p = gr.Slider(0.01, 1, value=settings.sampling.top_p, step=0.01, label=i18n("top_p"), elem_id="top-p")
            max_new_tokens = gr.Slider(1, max(settings.max_tokens_limit, settings.sampling.max_new_tokens),
                                       value=settings.sampling.max_new_tokens, step=1, label=i18n("max_new_tokens"),
                                       elem_id="max-new-tokens")

        def ask(text: str, history: list[dict[str, Any]]) -> tuple[Any, ...]:
            """The user's message joins the history, and Stop replaces Send while the answer comes."""
            if not text.strip():
                return gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            return "", [*history, {"role": "user", "content": text}], "", gr.Button(visible=False), gr.Button(visible=True)

        def answer(history: list[dict[str, Any]], system_text: str, temperature: float, top_p: float,
                   max_new_tokens: float, request: gr.Request) -> Iterator[tuple[Any, ...]]:
            if not history or history[-1]["role"] != "user":  # nothing was asked (an empty message)
                return
            session = request.session_hash
            stopping.discard(session)
            sampling = Sampling(float(temperature), float(top_p), int(max_new_tokens))
            shown = [*history, {"role": "assistant", "content": ""}]
            pieces = client.stream(as_messages(history, system_text), sampling)
            try:
                for text in pieces:
                    if session in stopping:
                        break
                    shown[-1] = {"role": "assistant", "content": text}
                    yield shown, gr.skip(), ""
            except PageError as error:  # the question goes back to the box, to send again
                yield history[:-1], as_text(history[-1]["content"]), f"⚠️ {error}"
            finally:
                pieces.close()  # closes the request: the server stops generating
                stopping.discard(session)

        def ready() -> tuple[Any, ...]:
            return gr.Button(visible=True), gr.Button(visible=False, interactive=True)

        def stop_answer(request: gr.Request) -> Any:
            """Send comes back once the answer has ended (a new question before that would be dropped by Gradio)."""
            stopping.add(request.session_hash)
            return gr.Button(interactive=False)

        def clear_chat(request: gr.Request) -> tuple[Any, ...]:
            stopping.add(request.session_hash)
            return [], ""

        for trigger in (send.click, message.submit):
            asked = trigger(ask, [message, chat], [message, chat, status, send, stop], queue=False)
            answered = asked.then(answer, [chat, system, temperature, top_p, max_new_tokens], [chat, message, status])
            answered.then(ready, None, [send, stop], queue=False)
        stop.click(stop_answer, None, stop, queue=False)
        clear.click(clear_chat, None, [chat, status], queue=False)
    return page, i18n
