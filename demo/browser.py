"""What the demo and the tests sign in with, in place of a person: a scripted browser that follows
redirects, keeps cookies, and submits the HTML forms of the sign-in pages by pressing a named
button, until it is sent to the client's redirect URI (no JavaScript, no DOM: the pages need
neither); and the token storage the SDK's OAuth client keeps its registration and tokens in."""
from __future__ import annotations

from dataclasses import dataclass, field
from html.parser import HTMLParser
from urllib.parse import urljoin

import aiohttp
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

MAX_STEPS = 20


@dataclass
class Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)
    buttons: list[tuple[str, str]] = field(default_factory=list)  # (name, value)


class _Forms(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.forms: list[Form] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.forms.append(Form(a.get("action", ""), a.get("method", "get").lower()))
        elif self.forms and tag == "input" and a.get("type") == "hidden":
            self.forms[-1].fields[a.get("name", "")] = a.get("value", "")
        elif self.forms and tag == "button":
            self.forms[-1].buttons.append((a.get("name", ""), a.get("value", "")))


class SignInError(Exception):
    """The pages did not lead where expected; the message has the page's text."""


class ScriptedBrowser:
    """``press`` maps a page to the button to press: the first (name, value) found on the page."""

    def __init__(self, press: list[tuple[str, str]]) -> None:
        self.press = press
        self.session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True),
                                             timeout=aiohttp.ClientTimeout(total=30))
        self.pages: list[str] = []  # every page shown, for a caller that wants to look

    async def sign_in(self, url: str, until: str) -> str:
        """Open ``url`` and go on until a redirect to a URL starting with ``until``; that URL."""
        method, data = "GET", None
        for _ in range(MAX_STEPS):
            async with self.session.request(method, url, data=data,
                                            allow_redirects=False) as response:
                if response.status in (301, 302, 303, 307, 308):
                    url, method, data = urljoin(url, response.headers["Location"]), "GET", None
                    if url.startswith(until):
                        return url
                    continue
                body = await response.text()
                if response.status != 200:
                    raise SignInError(f"{response.status} at {url}: {_text(body)[:300]}")
            self.pages.append(body)
            url, method, data = self._submit(url, body)
        raise SignInError("too many pages")

    def _submit(self, url: str, body: str) -> tuple[str, str, dict[str, str]]:
        parser = _Forms()
        parser.feed(body)
        for form in parser.forms:
            for name, value in form.buttons:
                if (name, value) in self.press:
                    return urljoin(url, form.action), form.method.upper(), {
                        **form.fields, name: value}
        raise SignInError(f"no button to press at {url}: {_text(body)[:300]}")

    async def close(self) -> None:
        await self.session.close()


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        if data.strip():
            self.parts.append(data.strip())


def _text(html: str) -> str:
    """A page's words, for an error message."""
    parser = _Text()
    parser.feed(html)
    return " ".join(parser.parts)


class MemoryTokens:
    """The SDK's ``TokenStorage``, in memory (a demo or a test ends with its process)."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info
