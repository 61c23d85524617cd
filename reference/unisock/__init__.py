"""Unisock reference implementation: protocol core, server, client and CLI.

The names below are the public API; everything else is importable from its module but may
change between minor releases.
"""

from unisock._version import PROTOCOL_TOKEN, SPEC_VERSION, WIRE_VERSION, __version__
from unisock.auth import AuthConfig, Identity, TokenVerifier, mint_token
from unisock.backoff import BackoffParams, backoff_bounds, backoff_delay, drain_delay
from unisock.broker import Broker, ChannelKey, Position, PublishRecord, StoredEvent
from unisock.channels import (
    Channel,
    ChannelError,
    Namespace,
    Pattern,
    contains,
    matches,
    parse_channel,
    parse_pattern,
    publish_allowed,
    subscribe_allowed,
)
from unisock.client import Ack, Client, ClientState, Event, Gap, Subscription
from unisock.closecodes import CloseCode, ReconnectClass, close_class, parse_close_reason
from unisock.config import ServerConfig
from unisock.delivery import ConnectionView, EventView, SubscriptionView, should_deliver
from unisock.errors import LocalError, PeerError, UnisockError
from unisock.filters import Filter, FilterError, compile_filter, evaluate
from unisock.memory_broker import MemoryBroker
from unisock.server import UnisockServer, run_server
from unisock.session import SessionCore
from unisock.settings import Settings, load_settings
from unisock.sync_client import SyncClient

__all__ = [
    "PROTOCOL_TOKEN",
    "SPEC_VERSION",
    "WIRE_VERSION",
    "Ack",
    "AuthConfig",
    "BackoffParams",
    "Broker",
    "Channel",
    "ChannelError",
    "ChannelKey",
    "Client",
    "ClientState",
    "CloseCode",
    "ConnectionView",
    "Event",
    "EventView",
    "Filter",
    "FilterError",
    "Gap",
    "Identity",
    "LocalError",
    "MemoryBroker",
    "Namespace",
    "Pattern",
    "PeerError",
    "Position",
    "PublishRecord",
    "ReconnectClass",
    "ServerConfig",
    "SessionCore",
    "Settings",
    "StoredEvent",
    "Subscription",
    "SubscriptionView",
    "SyncClient",
    "TokenVerifier",
    "UnisockError",
    "UnisockServer",
    "__version__",
    "backoff_bounds",
    "backoff_delay",
    "close_class",
    "compile_filter",
    "contains",
    "drain_delay",
    "evaluate",
    "load_settings",
    "matches",
    "mint_token",
    "parse_channel",
    "parse_close_reason",
    "parse_pattern",
    "publish_allowed",
    "run_server",
    "should_deliver",
    "subscribe_allowed",
]
