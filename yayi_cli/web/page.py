"""The chat page: Gradio's chat components on top of a `ChatClient`, its labels in English and Chinese (the browser's
language picks)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from yayi_cli.web.client import ChatClient, PageError, Sampling


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


def as_text(content: Any) -> str:
    """A chat message's text: Gradio hands history back as a string or as a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return str(content)


def as_messages(history: list[dict[str, Any]], system: str) -> list[dict[str, str]]:
    """The OpenAI messages for the history: the system text first (sent as it is in the box, empty too, so that
    clearing the box means no system text rather than the template's)."""
    return [{"role": "system", "content": system}, *({"role": item["role"], "content": as_text(item["content"])}
                                                      for item in history)]


def build_page(client: ChatClient, settings: PageSettings) -> tuple[Any, Any]:
    """The page's Blocks and the I18n its labels come from (pass it to `launch`)."""
    import gradio as gr

    i18n = gr.I18n(**LABELS)
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
                   max_new_tokens: float) -> Iterator[tuple[Any, ...]]:
            if not history or history[-1]["role"] != "user":  # nothing was asked (an empty message)
                return
            sampling = Sampling(float(temperature), float(top_p), int(max_new_tokens))
            shown = [*history, {"role": "assistant", "content": ""}]
            try:
                for text in client.stream(as_messages(history, system_text), sampling):
                    shown[-1] = {"role": "assistant", "content": text}
                    yield shown, gr.skip(), ""
            except PageError as error:  # the question goes back to the box, to send again
                yield history[:-1], as_text(history[-1]["content"]), f"⚠️ {error}"

        def ready() -> tuple[Any, ...]:
            return gr.Button(visible=True), gr.Button(visible=False)

        answering = []
        for trigger in (send.click, message.submit):
            asked = trigger(ask, [message, chat], [message, chat, status, send, stop], queue=False)
            answered = asked.then(answer, [chat, system, temperature, top_p, max_new_tokens], [chat, message, status])
            answered.then(ready, None, [send, stop], queue=False)
            answering.append(answered)
        # a cancelled answer runs no `.then`: Stop and Clear bring Send back themselves
        stop.click(ready, None, [send, stop], cancels=answering, queue=False)
        clear.click(lambda: ([], "", *ready()), None, [chat, status, send, stop], cancels=answering, queue=False)
    return page, i18n
