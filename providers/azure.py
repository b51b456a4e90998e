"""Azure OpenAI: the OpenAI translation (a pass-through) on deployment URLs.

Targets the data-plane REST API `{base_url}/openai/deployments/{deployment}/...
?api-version=...`, where base_url is the resource endpoint
(`https://<resource>.openai.azure.com`) and the deployment is the model's
`upstream` name. The key goes in the `api-key` header by default; `auth_style =
"bearer"` sends a Microsoft Entra token as `Authorization: Bearer` instead.
Only the URLs and the auth header differ from the OpenAI adapter.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from providers.openai import OpenAIProvider

DEFAULT_API_VERSION = "2024-10-21"


class AzureProvider(OpenAIProvider):
    type = "azure"

    def __init__(self, name: str, settings: Any) -> None:
        if not settings.base_url:
            raise ValueError(f"provider {name!r}: azure needs `base_url` (https://<resource>.openai.azure.com)")
        super().__init__(name, settings)
        self.api_version = settings.api_version or DEFAULT_API_VERSION

    def _auth_headers(self) -> dict[str, str]:
        if self.settings.auth_style == "default" and self.settings.api_key:
            return {"content-type": "application/json", **self.settings.headers, "api-key": self.settings.api_key}
        return super()._auth_headers()

    def deployment_url(self, deployment: str, operation: str) -> str:
        return (
            f"{self.base_url}/openai/deployments/{quote(deployment, safe='')}/{operation}"
            f"?api-version={quote(self.api_version, safe='')}"
        )

    def chat_url(self, upstream_model: str) -> str:
        return self.deployment_url(upstream_model, "chat/completions")

    def embeddings_url(self, upstream_model: str) -> str:
        return self.deployment_url(upstream_model, "embeddings")
