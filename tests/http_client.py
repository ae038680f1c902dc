"""The real `openai` client against `mlxsup serve --http`: one scenario per call, its
observations printed as one JSON object for tests/http.rs to assert on.

usage: http_client.py BASE_URL SCENARIO [ARGS...]
"""

import json
import re
import sys
import threading
import time
import urllib.request

import openai
from openai import OpenAI

base, scenario, *args = sys.argv[1:]


def client(key="none"):
    return OpenAI(base_url=base, api_key=key, max_retries=0, timeout=120)


def out(**kw):
    print(json.dumps(kw))


def chat(c, model, prompt, n, stream=False, **extra):
    return c.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": prompt}],
        max_tokens=n,
        temperature=0,
        stream=stream,
        **extra,
    )


def streamed_text(stream):
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage.model_dump()
        for ch in chunk.choices:
            if getattr(ch, "delta", None) is not None and ch.delta.content:
                text += ch.delta.content
            if getattr(ch, "text", None):
                text += ch.text
            if ch.finish_reason:
                finish = ch.finish_reason
    return text, usage, finish


def ps():
    with urllib.request.urlopen(base.removesuffix("/v1") + "/api/ps") as r:
        return json.load(r)["models"]


if scenario == "basic":
    model, prompt, n = args[0], args[1], int(args[2])
    c = client()
    r = chat(c, model, prompt, n)
    s_text, s_usage, s_finish = streamed_text(
        chat(c, model, prompt, n, stream=True, stream_options={"include_usage": True})
    )
    t = c.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0)
    ts_text, ts_usage, _ = streamed_text(
        c.completions.create(
            model=model,
            prompt=prompt,
            max_tokens=n,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    models = [m.id for m in c.models.list().data]
    out(
        chat=r.choices[0].message.content,
        chat_usage=r.usage.model_dump(),
        chat_finish=r.choices[0].finish_reason,
        chat_stream=s_text,
        chat_stream_usage=s_usage,
        chat_stream_finish=s_finish,
        text=t.choices[0].text,
        text_usage=t.usage.model_dump(),
        text_stream=ts_text,
        text_stream_usage=ts_usage,
        models=models,
    )

elif scenario == "refusal":
    c = client()
    try:
        chat(c, args[0], "hi", 4)
        out(raised=None)
    except openai.APIStatusError as e:
        out(
            raised="APIStatusError" if isinstance(e, openai.APIStatusError) else type(e).__name__,
            status=e.status_code,
            body=e.body,
            should_retry=e.response.headers.get("x-should-retry"),
        )

elif scenario == "crash":
    model = args[0]
    c = client()
    got = 0
    try:
        stream = chat(
            c, model, "Once upon a time", 64, stream=True,
            extra_headers={"x-mlxsup-inject-fault": "kill@decode:4"},
        )
        for chunk in stream:
            for ch in chunk.choices:
                if ch.delta.content:
                    got += 1
        out(raised=None)
    except openai.APIError as e:
        at = time.time()
        body = e.body if isinstance(e.body, dict) else {}
        tail = body.get("stderr_tail") or ""
        m = re.search(r"unix_us=(\d+)", tail)
        died = int(m.group(1)) / 1e6 if m else None
        after = chat(c, model, "hi", 4).choices[0].message.content
        out(
            raised=type(e).__name__,
            kind=body.get("kind"),
            chunks_before=got,
            latency_ms=(at - died) * 1e3 if died else None,
            next_ok=after is not None,
        )

elif scenario == "disconnect":
    model = args[0]
    c = client()
    stream = chat(c, model, "x", 32000, stream=True)
    seen = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content is not None:
            seen += 1
        if seen >= 3:
            break
    stream.response.close()
    t0 = time.time()
    state = None
    while time.time() - t0 < 10:
        rows = [m for m in ps() if m["name"] == model]
        state = rows[0]["state"] if rows else None
        if state == "ready":
            break
        time.sleep(0.01)
    ready_ms = (time.time() - t0) * 1e3
    after = chat(c, model, "hi", 4)
    out(state=state, ready_ms=ready_ms, next_tokens=after.usage.completion_tokens)

elif scenario == "concurrent":
    model_a, model_b, prompt, n = args[0], args[1], args[2], int(args[3])
    results = {}

    def one(i):
        model = model_a if i % 2 == 0 else model_b
        text, usage, _ = streamed_text(chat(client(), model, prompt, n, stream=True))
        results[i] = {"model": model, "text": text}

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out(results=[results.get(i) for i in range(16)])

elif scenario == "errors":
    model = args[0]
    c = client()
    res = {}
    try:
        c.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    except openai.NotFoundError as e:
        res["unknown_model"] = [e.status_code, e.body.get("param")]
    try:
        chat(c, model, "x", 4, extra_body={"temperature": -3})
    except openai.BadRequestError as e:
        res["bad_temperature"] = [e.status_code, e.body.get("param"), e.body.get("message")]
    try:
        chat(c, model, "x", 1_000_000)
    except openai.BadRequestError as e:
        res["too_long"] = [e.status_code, e.body.get("code"), e.body.get("kind")]
    req = urllib.request.Request(
        base + "/chat/completions", data=b"{not json", headers={"content-type": "application/json"}
    )
    try:
        urllib.request.urlopen(req)
    except urllib.error.HTTPError as e:
        res["bad_json"] = [e.code, json.load(e)["error"]["param"]]
    out(**res)

elif scenario == "image":
    # A chat message with data: URL images (then its text), and a remote URL refused.
    import base64
    model, prompt, n, *paths = args
    c = client()
    parts = [
        {"type": "image_url",
         "image_url": {"url": "data:image/png;base64," + base64.b64encode(open(p, "rb").read()).decode()}}
        for p in paths
    ]
    parts.append({"type": "text", "text": prompt})
    r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": parts}],
                                  max_tokens=int(n), temperature=0)
    res = {"text": r.choices[0].message.content, "usage": r.usage.model_dump()}
    try:
        c.chat.completions.create(model=model, max_tokens=2, messages=[{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            {"type": "text", "text": prompt}]}])
    except openai.BadRequestError as e:
        res["remote"] = [e.status_code, e.body.get("param"), e.body.get("message")]
    # A truncated PNG and a non-image as data: URLs, after a good text part.
    for key, data in [("truncated", open(paths[0], "rb").read()[:200]), ("not_image", b"hello")]:
        try:
            c.chat.completions.create(model=model, max_tokens=2, messages=[{"role": "user", "content": [
                {"type": "text", "text": prompt},
                {"type": "image_url", "image_url": {
                    "url": "data:image/png;base64," + base64.b64encode(data).decode()}}]}])
        except openai.BadRequestError as e:
            res[key] = [e.status_code, e.body.get("param"), e.body.get("message")]
    out(**res)

elif scenario == "image_refusal":
    # Images that do not fit the budget with the loaded model: a 507, then a small one fits.
    import base64
    model, small, *big = args
    c = client()

    def ask(paths):
        parts = [{"type": "image_url", "image_url": {
            "url": "data:image/png;base64," + base64.b64encode(open(p, "rb").read()).decode()}}
            for p in paths] + [{"type": "text", "text": "Describe the pictures."}]
        return c.chat.completions.create(model=model, messages=[{"role": "user", "content": parts}],
                                         max_tokens=2, temperature=0)
    res = {}
    res["small"] = ask([small]).usage.completion_tokens
    try:
        ask(big)
        res["big"] = None
    except openai.APIStatusError as e:
        res["big"] = [e.status_code, e.body.get("type"), e.body.get("message")]
    out(**res)

elif scenario == "auth":
    model, key = args[0], args[1]
    res = {}
    try:
        chat(client("wrong"), model, "x", 2)
    except openai.AuthenticationError as e:
        res["wrong_key"] = e.status_code
    res["right_key"] = chat(client(key), model, "x", 2).usage.completion_tokens
    out(**res)

elif scenario == "multiturn":
    # A chat resent whole every turn (turn 2 streamed with usage), then a completion
    # and its continuation: the answers, and what usage says was cached.
    model, prompt, n, turns = args[0], args[1], int(args[2]), int(args[3])
    c = client()
    messages = [{"role": "system", "content": "You are a terse assistant."},
                {"role": "user", "content": prompt}]
    texts, cached, prompt_tokens = [], [], []
    for turn in range(turns):
        kw = dict(model=model, messages=messages, max_tokens=n, temperature=0)
        if turn == 1:
            text, usage, _ = streamed_text(c.chat.completions.create(
                stream=True, stream_options={"include_usage": True}, **kw))
        else:
            r = c.chat.completions.create(**kw)
            text, usage = r.choices[0].message.content, r.usage.model_dump()
        texts.append(text)
        cached.append(usage["prompt_tokens_details"]["cached_tokens"])
        prompt_tokens.append(usage["prompt_tokens"])
        messages += [{"role": "assistant", "content": text},
                     {"role": "user", "content": f"And then? (turn {turn + 2})"}]
    first = c.completions.create(model=model, prompt=prompt, max_tokens=n, temperature=0)
    again = c.completions.create(model=model, prompt=prompt + first.choices[0].text + " and",
                                 max_tokens=n, temperature=0)
    out(texts=texts, cached=cached, prompt_tokens=prompt_tokens,
        completion=[first.choices[0].text, again.choices[0].text],
        completion_cached=[first.usage.prompt_tokens_details.cached_tokens,
                           again.usage.prompt_tokens_details.cached_tokens],
        ps=[m for m in ps()])

else:
    sys.exit(f"unknown scenario {scenario}")
