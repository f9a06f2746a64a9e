"""
The configuration: one INI file read once into frozen, typed objects.

C{model} holds the objects, C{ini} reads the file, C{checks} cross-checks
sections (actions named by triggers exist, templates use known variables).
Import the public names from here: C{from daemon.config import Config}.
"""

from daemon.config.ini import config_from_string, read_config
from daemon.config.model import (
    AcceptRule,
    BrokerConfig,
    Config,
    ConfigError,
    DaemonConfig,
    ParseSpec,
    PublishConfig,
    QueueConfig,
    ReaderConfig,
    ReplyUntil,
    RetryConfig,
    SendConfig,
    ServerConfig,
    SubscribeConfig,
    TLSConfig,
)

__all__ = [
    "AcceptRule",
    "BrokerConfig",
    "Config",
    "ConfigError",
    "DaemonConfig",
    "ParseSpec",
    "PublishConfig",
    "QueueConfig",
    "ReaderConfig",
    "ReplyUntil",
    "RetryConfig",
    "SendConfig",
    "ServerConfig",
    "SubscribeConfig",
    "TLSConfig",
    "config_from_string",
    "read_config",
]
