"""Server settings: one pydantic-settings class, read from HPSEARCH_* environment variables."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, FieldSerializationInfo, SecretStr, field_serializer, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# search_spaces/ sits next to the packages in a checkout and is copied beside them in images.
DEFAULT_SEARCH_SPACES = Path(__file__).resolve().parent.parent / "search_spaces"


class Settings(BaseSettings):
    """Everything `hpsearch serve` can be told; validated once at start."""

    # env_ignore_empty: `TOKEN=` in an .env file means "off", not "the empty token".
    model_config = SettingsConfigDict(
        env_prefix="HPSEARCH_", extra="ignore", frozen=True, env_ignore_empty=True
    )

    data_dir: Path = Field(
        Path(".hpsearch"), description="Folder for the SQLite file and artifacts"
    )
    storage: SecretStr | None = Field(
        None, description="SQLAlchemy URL; default sqlite:///<data_dir>/hpsearch.db"
    )
    artifacts: str | None = Field(
        None,
        description="Artifact store: a folder (default <data_dir>/artifacts) or s3://bucket/prefix",
    )
    search_spaces_dir: Path = DEFAULT_SEARCH_SPACES
    public_url: str | None = Field(
        None, description="Base URL users reach the server at, used in dashboard_url"
    )

    # Floats so that tests (and impatient clusters) can run sub-second leases.
    heartbeat_interval: float = Field(10, ge=0.1, le=3600, description="Seconds")
    lease_grace: float | None = Field(
        None, ge=0.1, description="Seconds; default 3x heartbeat_interval"
    )
    max_retries: int = Field(3, ge=0, le=100, description="Retries of a trial whose worker died")
    keep_top_k: int = Field(5, ge=1, le=1000, description="Trials whose final weights are kept")
    max_body_bytes: int = Field(1 << 20, description="Largest JSON body accepted")
    max_artifact_bytes: int = Field(4 << 30, description="Largest checkpoint or weights upload")

    admin_token: SecretStr | None = None
    worker_token: SecretStr | None = None
    read_token: SecretStr | None = None
    read_access: Literal["open", "token"] = "token"
    allowed_roots: list[Path] = Field(
        default_factory=list,
        description="When set, data roots and weights_path must lie under one of these folders",
    )

    @model_validator(mode="after")
    def _check_tokens(self) -> Settings:
        if (self.worker_token or self.read_token) and not self.admin_token:
            raise ValueError("HPSEARCH_ADMIN_TOKEN must be set when other tokens are")
        return self

    @field_serializer("storage", "admin_token", "worker_token", "read_token", when_used="json")
    def _secret(self, value: SecretStr | None, info: FieldSerializationInfo) -> str | None:
        """Masked in JSON, unless the dump is for `hpsearch serve`'s own server processes."""
        if value is None:
            return None
        return value.get_secret_value() if (info.context or {}).get("secrets") else str(value)

    @property
    def grace_period(self) -> float:
        return self.lease_grace or 3 * self.heartbeat_interval

    @property
    def storage_url(self) -> str:
        if self.storage is not None:
            return self.storage.get_secret_value()
        return f"sqlite:///{(self.data_dir / 'hpsearch.db').resolve()}"

    @property
    def tokens_enabled(self) -> bool:
        return self.admin_token is not None
