//! # payment-saga
//!
//! Orchestrates a payment: once a payment exists, reserve the inventory; once the inventory is
//! reserved, request the shipment; if the reservation fails, cancel the payment (the
//! compensating action).
//!
//! ```text
//! PaymentCreated             ──► InventoryReservationRequested
//! InventoryReserved          ──► ShipmentRequested
//! InventoryReservationFailed ──► PaymentCancelled              (compensation)
//! ```
//!
//! **Subscribes to** `PaymentCreated`, `InventoryReserved`, `InventoryReservationFailed`.
//! The payment id is the event's `subject`, or `data.payment_id` when there is no subject (if
//! both are present they must agree). Every emitted event carries the payment id as its
//! subject, so the host keeps one payment's events in order; the host adds the correlation
//! id and, as causation id, the id of the event being handled.
//!
//! **Payloads** (JSON; amounts in minor units, e.g. cents):
//!
//! | event                                | data                                                        |
//! |--------------------------------------|-------------------------------------------------------------|
//! | `PaymentCreated`                     | `{ "payment_id", "order_id", "amount", "currency", "items": [{ "sku", "quantity" }] }` |
//! | `InventoryReserved`                  | `{ "payment_id", "order_id"?, "reservation_id"? }`          |
//! | `InventoryReservationFailed`         | `{ "payment_id", "order_id"?, "reason"? }`                  |
//! | emits `InventoryReservationRequested`| `{ "payment_id", "order_id", "items" }`                     |
//! | emits `ShipmentRequested`            | `{ "payment_id", "order_id", "items", "reservation_id" }`   |
//! | emits `PaymentCancelled`             | `{ "payment_id", "order_id", "amount", "currency", "reason" }` |
//!
//! **Stores** the saga's state under `saga:{payment_id}`: the order, amount and items from
//! `PaymentCreated` and the step reached (`reserving-inventory`, `shipment-requested`,
//! `cancelled`). Later steps take the order id, items and amount from there; an inventory
//! event for a payment the saga has not seen must carry its own `order_id`.
//!
//! **Idempotent**: a step is taken once. A duplicate `PaymentCreated`, or an inventory event
//! for a payment already past that step, emits nothing. The state write and the emitted event
//! commit together with the delivery, so a failure between them cannot split them.
//!
//! **Fails** with `reject` for a payload that does not decode, a missing payment or order id,
//! or contradictory news (the reservation failing after it succeeded, or succeeding after the
//! payment was cancelled — someone has to look at those); with `retry` when the store fails.

use evhost_guest::serde::{Deserialize, Serialize};
use evhost_guest::{Event, Handler, HandlerError, Metadata, OutgoingEvent, export_handler, kv, log, publish};

// ANCHOR: handler
/// The plugin.
struct PaymentSaga;

impl Handler for PaymentSaga {
    fn metadata() -> Metadata {
        Metadata::new(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"))
            .subscribe("PaymentCreated")
            .subscribe("InventoryReserved")
            .subscribe("InventoryReservationFailed")
    }

    fn handle(event: Event) -> Result<(), HandlerError> {
        let input = Input::from_event(&event)?;
        let key = saga_key(input.payment_id());
        let saga: Option<Saga> = kv::get_json(&key)?;
        match step(saga, input)? {
            Step::Advance { saga, emit } => {
                kv::set_json(&key, &saga)?;
                let event_type = emit.event_type.clone();
                let id = publish(*emit)?;
                log::info!("payment {}: emitted {event_type} `{id}`", saga.payment_id);
            }
            Step::Ignore(reason) => log::info!("{} `{}` ignored: {reason}", event.event_type(), event.id()),
        }
        Ok(())
    }
}

export_handler!(PaymentSaga);
// ANCHOR_END: handler

/// The key-value key of a payment's saga state.
fn saga_key(payment_id: &str) -> String {
    format!("saga:{payment_id}")
}

/// One line of an order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "evhost_guest::serde")]
pub struct Item {
    pub sku: String,
    pub quantity: u32,
}

/// The saga's state for one payment, as stored under `saga:{payment_id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "evhost_guest::serde")]
pub struct Saga {
    pub payment_id: String,
    pub order_id: String,
    /// In minor units; unknown if the saga joined after `PaymentCreated`.
    pub amount: Option<u64>,
    pub currency: Option<String>,
    pub items: Vec<Item>,
    pub status: Status,
}

/// How far a payment has come.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(crate = "evhost_guest::serde", rename_all = "kebab-case")]
pub enum Status {
    /// `InventoryReservationRequested` was emitted.
    ReservingInventory,
    /// `ShipmentRequested` was emitted.
    ShipmentRequested,
    /// `PaymentCancelled` was emitted.
    Cancelled,
}

/// `PaymentCreated` data.
#[derive(Debug, Deserialize)]
#[serde(crate = "evhost_guest::serde")]
struct PaymentCreated {
    payment_id: Option<String>,
    order_id: String,
    amount: u64,
    currency: String,
    items: Vec<Item>,
}

/// `InventoryReserved` data.
#[derive(Debug, Deserialize)]
#[serde(crate = "evhost_guest::serde")]
struct InventoryReserved {
    payment_id: Option<String>,
    order_id: Option<String>,
    reservation_id: Option<String>,
}

/// `InventoryReservationFailed` data.
#[derive(Debug, Deserialize)]
#[serde(crate = "evhost_guest::serde")]
struct InventoryReservationFailed {
    payment_id: Option<String>,
    order_id: Option<String>,
    reason: Option<String>,
}

/// `InventoryReservationRequested` data.
#[derive(Debug, Serialize)]
#[serde(crate = "evhost_guest::serde")]
struct InventoryReservationRequested<'a> {
    payment_id: &'a str,
    order_id: &'a str,
    items: &'a [Item],
}

/// `ShipmentRequested` data.
#[derive(Debug, Serialize)]
#[serde(crate = "evhost_guest::serde")]
struct ShipmentRequested<'a> {
    payment_id: &'a str,
    order_id: &'a str,
    items: &'a [Item],
    reservation_id: Option<&'a str>,
}

/// `PaymentCancelled` data.
#[derive(Debug, Serialize)]
#[serde(crate = "evhost_guest::serde")]
struct PaymentCancelled<'a> {
    payment_id: &'a str,
    order_id: &'a str,
    amount: Option<u64>,
    currency: Option<&'a str>,
    reason: &'a str,
}

/// An event the saga reacts to, decoded, with its payment id settled.
#[derive(Debug)]
enum Input {
    PaymentCreated {
        payment_id: String,
        data: PaymentCreated,
    },
    InventoryReserved {
        payment_id: String,
        data: InventoryReserved,
    },
    InventoryReservationFailed {
        payment_id: String,
        data: InventoryReservationFailed,
    },
}

impl Input {
    fn from_event(event: &Event) -> Result<Self, HandlerError> {
        Ok(match event.event_type() {
            "PaymentCreated" => {
                let data: PaymentCreated = event.data_json()?;
                let payment_id = payment_id(event, data.payment_id.as_deref())?;
                Self::PaymentCreated { payment_id, data }
            }
            "InventoryReserved" => {
                let data: InventoryReserved = event.data_json()?;
                let payment_id = payment_id(event, data.payment_id.as_deref())?;
                Self::InventoryReserved { payment_id, data }
            }
            "InventoryReservationFailed" => {
                let data: InventoryReservationFailed = event.data_json()?;
                let payment_id = payment_id(event, data.payment_id.as_deref())?;
                Self::InventoryReservationFailed { payment_id, data }
            }
            other => {
                return Err(HandlerError::reject(format!(
                    "payment-saga does not handle `{other}` events"
                )));
            }
        })
    }

    fn payment_id(&self) -> &str {
        match self {
            Self::PaymentCreated { payment_id, .. }
            | Self::InventoryReserved { payment_id, .. }
            | Self::InventoryReservationFailed { payment_id, .. } => payment_id,
        }
    }

    fn event_type(&self) -> &'static str {
        match self {
            Self::PaymentCreated { .. } => "PaymentCreated",
            Self::InventoryReserved { .. } => "InventoryReserved",
            Self::InventoryReservationFailed { .. } => "InventoryReservationFailed",
        }
    }
}

/// The payment id: the subject, else `data.payment_id`; if both are there they must agree.
fn payment_id(event: &Event, data_id: Option<&str>) -> Result<String, HandlerError> {
    let id = match (event.subject(), data_id) {
        (Some(subject), Some(data_id)) if subject != data_id => {
            return Err(HandlerError::reject(format!(
                "{} event `{}`: subject `{subject}` and data.payment_id `{data_id}` differ",
                event.event_type(),
                event.id()
            )));
        }
        (Some(id), _) | (None, Some(id)) => id,
        (None, None) => "",
    };
    if id.trim().is_empty() {
        return Err(HandlerError::reject(format!(
            "{} event `{}` names no payment: set `subject` or `data.payment_id`",
            event.event_type(),
            event.id()
        )));
    }
    Ok(id.to_owned())
}

/// What the saga does with an event.
#[derive(Debug, PartialEq)]
enum Step {
    /// Store `saga` and emit `emit` (boxed: the variant would otherwise dwarf the other).
    Advance { saga: Saga, emit: Box<OutgoingEvent> },
    /// Nothing to do (a duplicate or a late event), and why.
    Ignore(String),
}

/// The saga's state machine, without any I/O.
fn step(saga: Option<Saga>, input: Input) -> Result<Step, HandlerError> {
    let event_type = input.event_type();
    match (input, saga) {
        (Input::PaymentCreated { payment_id, .. }, Some(_)) => Ok(Step::Ignore(format!(
            "the saga for payment `{payment_id}` has already started"
        ))),
        (Input::PaymentCreated { payment_id, data }, None) => {
            let saga = Saga {
                payment_id,
                order_id: data.order_id,
                amount: Some(data.amount),
                currency: Some(data.currency),
                items: data.items,
                status: Status::ReservingInventory,
            };
            let emit = emit(
                &saga,
                "InventoryReservationRequested",
                &InventoryReservationRequested {
                    payment_id: &saga.payment_id,
                    order_id: &saga.order_id,
                    items: &saga.items,
                },
            )?;
            Ok(Step::Advance { saga, emit })
        }

        (Input::InventoryReserved { payment_id, data }, saga) => {
            let saga = match saga {
                Some(Saga {
                    status: Status::ShipmentRequested,
                    ..
                }) => {
                    return Ok(Step::Ignore(format!(
                        "shipment for payment `{payment_id}` already requested"
                    )));
                }
                Some(Saga {
                    status: Status::Cancelled,
                    ..
                }) => {
                    return Err(HandlerError::reject(format!(
                        "inventory was reserved for payment `{payment_id}`, which is already cancelled; \
                         the reservation needs releasing by hand"
                    )));
                }
                Some(saga) => saga,
                None => joined_late(payment_id, data.order_id, event_type)?,
            };
            let saga = Saga {
                status: Status::ShipmentRequested,
                ..saga
            };
            let emit = emit(
                &saga,
                "ShipmentRequested",
                &ShipmentRequested {
                    payment_id: &saga.payment_id,
                    order_id: &saga.order_id,
                    items: &saga.items,
                    reservation_id: data.reservation_id.as_deref(),
                },
            )?;
            Ok(Step::Advance { saga, emit })
        }

        (Input::InventoryReservationFailed { payment_id, data }, saga) => {
            let saga = match saga {
                Some(Saga {
                    status: Status::Cancelled,
                    ..
                }) => {
                    return Ok(Step::Ignore(format!(
                        "payment `{payment_id}` is already cancelled"
                    )));
                }
                Some(Saga {
                    status: Status::ShipmentRequested,
                    ..
                }) => {
                    return Err(HandlerError::reject(format!(
                        "inventory reservation for payment `{payment_id}` failed after it had succeeded \
                         and the shipment was requested"
                    )));
                }
                Some(saga) => saga,
                None => joined_late(payment_id, data.order_id, event_type)?,
            };
            let saga = Saga {
                status: Status::Cancelled,
                ..saga
            };
            let reason = data
                .reason
                .unwrap_or_else(|| "inventory reservation failed".to_owned());
            let emit = emit(
                &saga,
                "PaymentCancelled",
                &PaymentCancelled {
                    payment_id: &saga.payment_id,
                    order_id: &saga.order_id,
                    amount: saga.amount,
                    currency: saga.currency.as_deref(),
                    reason: &reason,
                },
            )?;
            Ok(Step::Advance { saga, emit })
        }
    }
}

/// A saga for a payment whose `PaymentCreated` this plugin never saw: all it knows is what
/// the inventory event says.
fn joined_late(payment_id: String, order_id: Option<String>, event_type: &str) -> Result<Saga, HandlerError> {
    let order_id = order_id.ok_or_else(|| {
        HandlerError::reject(format!(
            "{event_type} for unknown payment `{payment_id}` carries no `order_id`"
        ))
    })?;
    Ok(Saga {
        payment_id,
        order_id,
        amount: None,
        currency: None,
        items: Vec::new(),
        status: Status::ReservingInventory,
    })
}

/// The event to emit for `saga`, its payment id as subject.
fn emit(saga: &Saga, event_type: &str, data: &impl Serialize) -> Result<Box<OutgoingEvent>, HandlerError> {
    let event = OutgoingEvent::new(event_type)
        .subject(&saga.payment_id)
        .json(data)?;
    Ok(Box::new(event))
}

#[cfg(test)]
mod tests {
    use evhost_guest::serde_json::{Value, from_slice, json};

    use super::*;

    fn event(id: &str, event_type: &str, data: Value) -> Event {
        Event::new(id, "payments", event_type)
            .with_subject("p1")
            .with_json(&data)
            .unwrap()
    }

    fn payment_created() -> Event {
        event(
            "e1",
            "PaymentCreated",
            json!({
                "payment_id": "p1", "order_id": "o1", "amount": 4999, "currency": "EUR",
                "items": [{ "sku": "book", "quantity": 2 }],
            }),
        )
    }

    fn run(saga: Option<Saga>, event: &Event) -> Result<Step, HandlerError> {
        step(saga, Input::from_event(event)?)
    }

    fn advance(step: Step) -> (Saga, OutgoingEvent) {
        match step {
            Step::Advance { saga, emit } => (saga, *emit),
            Step::Ignore(reason) => panic!("expected a step, got Ignore({reason})"),
        }
    }

    fn data(event: &OutgoingEvent) -> Value {
        from_slice(event.data.as_deref().unwrap()).unwrap()
    }

    #[test]
    fn the_happy_path_requests_inventory_then_shipment() {
        let (saga, emitted) = advance(run(None, &payment_created()).unwrap());
        assert_eq!(saga.status, Status::ReservingInventory);
        assert_eq!(emitted.event_type, "InventoryReservationRequested");
        assert_eq!(emitted.subject.as_deref(), Some("p1"));
        assert_eq!(
            data(&emitted),
            json!({ "payment_id": "p1", "order_id": "o1", "items": [{ "sku": "book", "quantity": 2 }] })
        );

        let reserved = event(
            "e2",
            "InventoryReserved",
            json!({ "payment_id": "p1", "reservation_id": "r1" }),
        );
        let (saga, emitted) = advance(run(Some(saga), &reserved).unwrap());
        assert_eq!(saga.status, Status::ShipmentRequested);
        assert_eq!(emitted.event_type, "ShipmentRequested");
        assert_eq!(emitted.subject.as_deref(), Some("p1"));
        assert_eq!(
            data(&emitted),
            json!({
                "payment_id": "p1", "order_id": "o1", "items": [{ "sku": "book", "quantity": 2 }],
                "reservation_id": "r1",
            })
        );

        // The same news again emits nothing.
        assert!(matches!(run(Some(saga), &reserved).unwrap(), Step::Ignore(_)));
    }

    #[test]
    fn a_failed_reservation_cancels_the_payment() {
        let (saga, _) = advance(run(None, &payment_created()).unwrap());
        let failed = event(
            "e2",
            "InventoryReservationFailed",
            json!({ "payment_id": "p1", "reason": "out of stock" }),
        );
        let (saga, emitted) = advance(run(Some(saga), &failed).unwrap());
        assert_eq!(saga.status, Status::Cancelled);
        assert_eq!(emitted.event_type, "PaymentCancelled");
        assert_eq!(emitted.subject.as_deref(), Some("p1"));
        assert_eq!(
            data(&emitted),
            json!({
                "payment_id": "p1", "order_id": "o1", "amount": 4999, "currency": "EUR",
                "reason": "out of stock",
            })
        );
        assert!(matches!(run(Some(saga), &failed).unwrap(), Step::Ignore(_)));
    }

    #[test]
    fn a_duplicate_payment_created_is_ignored() {
        let (saga, _) = advance(run(None, &payment_created()).unwrap());
        assert!(matches!(
            run(Some(saga), &payment_created()).unwrap(),
            Step::Ignore(_)
        ));
    }

    #[test]
    fn contradictory_news_is_rejected() {
        let (saga, _) = advance(run(None, &payment_created()).unwrap());
        let reserved = event("e2", "InventoryReserved", json!({}));
        let failed = event("e3", "InventoryReservationFailed", json!({}));

        let (shipped, _) = advance(run(Some(saga.clone()), &reserved).unwrap());
        let error = run(Some(shipped), &failed).unwrap_err();
        assert!(!error.is_retry());
        assert!(
            error.reason().contains("failed after it had succeeded"),
            "{error}"
        );

        let (cancelled, _) = advance(run(Some(saga), &failed).unwrap());
        assert!(
            run(Some(cancelled), &reserved)
                .unwrap_err()
                .reason()
                .contains("already cancelled")
        );
    }

    #[test]
    fn the_saga_can_join_late_when_the_event_names_the_order() {
        let reserved = event("e2", "InventoryReserved", json!({ "order_id": "o9" }));
        let (saga, emitted) = advance(run(None, &reserved).unwrap());
        assert_eq!(saga.order_id, "o9");
        assert_eq!(data(&emitted)["order_id"], "o9");

        let anonymous = event("e3", "InventoryReservationFailed", json!({}));
        let error = run(None, &anonymous).unwrap_err();
        assert!(error.reason().contains("carries no `order_id`"), "{error}");
    }

    #[test]
    fn ids_come_from_the_subject_or_the_data() {
        let no_subject = Event::new("e1", "payments", "InventoryReserved")
            .with_json(&json!({ "payment_id": "p5", "order_id": "o5" }))
            .unwrap();
        let (saga, emitted) = advance(run(None, &no_subject).unwrap());
        assert_eq!(saga.payment_id, "p5");
        assert_eq!(emitted.subject.as_deref(), Some("p5"));

        let conflict = event("e1", "InventoryReserved", json!({ "payment_id": "p2" }));
        assert!(run(None, &conflict).unwrap_err().reason().contains("differ"));
    }

    #[test]
    fn malformed_payloads_are_rejected() {
        let no_amount = event(
            "e1",
            "PaymentCreated",
            json!({ "order_id": "o1", "currency": "EUR", "items": [] }),
        );
        let error = run(None, &no_amount).unwrap_err();
        assert!(!error.is_retry());
        assert!(error.reason().contains("missing field `amount`"), "{error}");
    }

    #[test]
    fn saga_state_round_trips_through_json() {
        let (saga, _) = advance(run(None, &payment_created()).unwrap());
        let stored = evhost_guest::serde_json::to_value(&saga).unwrap();
        assert_eq!(stored["status"], "reserving-inventory");
        assert_eq!(
            evhost_guest::serde_json::from_value::<Saga>(stored).unwrap(),
            saga
        );
    }
}
