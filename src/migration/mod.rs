//! Moving an entity from one transport to another without losing, repeating
//! or reordering a message (`entities.<name>.migrate`).
//!
//! **Phases.** Each is a pure function of the entity's config ([`plan`]):
//!
//! | phase | producers write | consumers read | mirror (old → new) |
//! |---|---|---|---|
//! | `mirror` | old | old | runs |
//! | `cutover` | new | old up to its end, then new | runs (until it reaches the end) |
//! | `done` | new | new | — |
//! | `mirror` + `rollback: true` | old | new up to its end, then old | runs |
//!
//! **Copies.** The mirror writes every message of the old side to the new
//! side with key, headers, timestamp and — where the partition counts match
//! — partition index kept, plus a `conveyor-origin` header
//! (`<transport>/<name>/<partition>@<position>`, see [`origin`]). A message
//! is processed on the side it was produced on: consumers skip every copy
//! that came from the other side of their entity.
//!
//! **Cut-over.** One reload stops every task that touches the entity (so
//! every old-side produce in flight is acknowledged and committed) and
//! starts them again: producers on the new side; consumers through a
//! [`switch::Switch`], which reads the old side until the consumer group's
//! committed positions — read from the old transport itself — reach the
//! old side's end (the *fence*; nothing writes there any more), twice in a
//! row, then revokes every old-side partition, waits until its lanes ended,
//! and joins the group on the new side. An unknown position (no commit yet,
//! a broker that does not answer) is never taken for the fence. So no key's
//! message on the new side is processed before all of its messages on the
//! old side, none is processed twice because of the switch (the copies are
//! skipped) and none is skipped (the old side is finished first). A crash
//! anywhere in between resumes the same way: the fence is recomputed from
//! the transports.
//!
//! Caveats: every process that writes the entity must run the new phase
//! (producers outside Conveyor must switch themselves before `cutover`); a
//! consumer group that never committed on the old side while it holds
//! messages (`start_position: latest` with no traffic) cannot be fenced
//! and stays on the old side.

pub mod mirror;
pub mod origin;
pub mod plan;
pub mod status;
pub mod switch;
pub mod transcode;
pub mod verify;
