"""The public API's bodies, as pydantic models: they validate input and feed the OpenAPI document."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictStr


class KeyRequestBody(BaseModel):
    """What the frontend sends to POST /api/request-key."""

    model_config = ConfigDict(extra="ignore")
    llm: StrictStr = Field(min_length=1, max_length=128, description="a model id from GET /api/models",
                           examples=["gpt-4o"])
    email: StrictStr = Field(min_length=1, max_length=254, examples=["alice@example.com"])


class KeyRequestAnswer(BaseModel):
    message: str = Field(description="a sentence for the requester")
    success: bool = True
    request_id: str
    state: str


class RequestStatus(BaseModel):
    request_id: str
    model: str
    state: str
    message: str
    created_at: datetime
    updated_at: datetime
    reason: str | None = Field(None, description="why it was denied or failed, when it was")
    expires_at: datetime | None = Field(None, description="when the key stops working, once it is issued")


class ModelInfo(BaseModel):
    id: str
    title: str
    description: str = ""
    icon: str = ""
    color: str = ""


class ModelList(BaseModel):
    models: list[ModelInfo]


class FeaturedModelInfo(ModelInfo):
    subtitle: str = ""
    documentation_link: str = ""


class FeaturedModelList(BaseModel):
    models: list[FeaturedModelInfo]


class Health(BaseModel):
    status: str = Field(description="healthy or unhealthy")
    store: str
    namespace: str


class ErrorBody(BaseModel):
    message: str
    detail: Any = None
