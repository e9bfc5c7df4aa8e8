"""SQLAlchemy 2.0 typed mappings for every orderflow table; migrations live in ``migrations/``."""

from models.aftersale import Return, ReturnLine
from models.api_keys import ApiKey
from models.base import Base
from models.callbacks import CallbackDelivery, CallbackEndpoint
from models.catalog import Product, ProductPrice, Stock, StockMovement
from models.disputes import Dispute
from models.logistics import Shipment, ShipmentLine, TrackingEvent
from models.operators import ConsoleAudit, Operator
from models.ops import DeadLetter, ProcessedNotification
from models.orders import Order, OrderEvent, OrderLine, Reservation
from models.payments import Payment, Refund
from models.settlement import SettlementDifference, SettlementFile, SettlementLine
from models.users import User, UserSession

__all__ = [
    "ApiKey",
    "Base",
    "CallbackDelivery",
    "CallbackEndpoint",
    "ConsoleAudit",
    "DeadLetter",
    "Dispute",
    "Operator",
    "Order",
    "OrderEvent",
    "OrderLine",
    "Payment",
    "ProcessedNotification",
    "Product",
    "ProductPrice",
    "Refund",
    "Reservation",
    "Return",
    "ReturnLine",
    "SettlementDifference",
    "SettlementFile",
    "SettlementLine",
    "Shipment",
    "ShipmentLine",
    "Stock",
    "StockMovement",
    "TrackingEvent",
    "User",
    "UserSession",
]
