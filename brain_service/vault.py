"""Encryption at rest for account passwords and sessions (Fernet)."""

from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from brain_service.errors import SecretsUnavailable

HOW_TO_MAKE_A_KEY = (
    "set BRAIN_SECRET_KEY_FILE to a file holding a key made by "
    "`barter-brain keygen > brain.key`"
)


class Vault:
    """Encrypts and decrypts secrets; without a key it refuses both."""

    def __init__(self, key: bytes | None) -> None:
        self._fernet = Fernet(key) if key else None

    @classmethod
    def from_settings(cls, key: str, key_file: str) -> "Vault":
        """Read the key from `key` or the file `key_file`; both empty is allowed."""
        if key_file:
            try:
                key = Path(key_file).read_text().strip()
            except OSError as exc:
                raise SecretsUnavailable(
                    f"BRAIN_SECRET_KEY_FILE: cannot read {key_file}: {exc.strerror}"
                ) from None
        if not key:
            return cls(None)
        try:
            return cls(key.encode())
        except ValueError:
            raise SecretsUnavailable(
                "BRAIN_SECRET_KEY: not a Fernet key (32 url-safe base64 bytes); "
                + HOW_TO_MAKE_A_KEY
            ) from None

    @property
    def enabled(self) -> bool:
        return self._fernet is not None

    def seal(self, plaintext: bytes) -> bytes:
        if self._fernet is None:
            raise SecretsUnavailable(
                "no encryption key, so passwords and sessions cannot be stored: "
                + HOW_TO_MAKE_A_KEY
            )
        return self._fernet.encrypt(plaintext)

    def open(self, token: bytes) -> bytes:
        if self._fernet is None:
            raise SecretsUnavailable(
                "stored secrets need the encryption key: " + HOW_TO_MAKE_A_KEY
            )
        try:
            return self._fernet.decrypt(token)
        except InvalidToken:
            raise SecretsUnavailable(
                "a stored secret does not decrypt with the configured key"
            ) from None


def new_key() -> str:
    return Fernet.generate_key().decode()
