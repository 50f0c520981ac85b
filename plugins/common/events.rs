//! How the elements' `vpu-capture` threads take events from a session: in
//! batches, so that the streaming thread is woken once per batch.

use std::time::Duration;

use crate::m2m::Event;

/// Most events one batch takes: a device completing buffers without pause
/// still lets the streaming thread run.
const BATCH: usize = 8;

/// Waits up to `first` for an event, then takes the ones already there too
/// (at most [`BATCH`] in all), handing each to `handle`. The VPU finishes a
/// frame's OUTPUT and CAPTURE buffers together; waking the streaming thread
/// once per batch rather than once per event saves it a context switch per
/// frame. Returns how many events were handled and the first error, which
/// ends the batch.
pub(crate) fn handle_batch<E>(
    first: Duration,
    mut next: impl FnMut(Duration) -> Result<Option<Event>, E>,
    mut handle: impl FnMut(Event) -> Result<(), E>,
) -> (usize, Option<E>) {
    let mut timeout = first;
    let mut handled = 0;
    while handled < BATCH {
        match next(timeout).and_then(|event| event.map(&mut handle).transpose()) {
            Ok(Some(())) => handled += 1,
            Ok(None) => break,
            Err(e) => return (handled, Some(e)),
        }
        timeout = Duration::ZERO;
    }
    (handled, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::m2m::{Format, PixelFormat, SourceChange};

    fn event() -> Event {
        Event::SourceChange(SourceChange {
            format: Format::coded(PixelFormat::Fwht, 64, 64),
            formats: Vec::new(),
            min_capture_buffers: 1,
        })
    }

    #[test]
    fn a_batch_takes_what_is_there_and_stops_at_its_bound_or_an_error() {
        // Three events waiting, then none: all three, the first with the
        // caller's timeout, the rest without waiting.
        let mut waits = Vec::new();
        let mut left = 3;
        let (n, err) = handle_batch::<()>(
            Duration::from_millis(20),
            |t| {
                waits.push(t);
                Ok((left > 0).then(|| {
                    left -= 1;
                    event()
                }))
            },
            |_| Ok(()),
        );
        assert_eq!((n, err), (3, None));
        assert_eq!(waits[0], Duration::from_millis(20));
        assert!(waits[1..].iter().all(|t| t.is_zero()));
        // An endless supply: the batch ends at its bound.
        let (n, _) = handle_batch::<()>(Duration::ZERO, |_| Ok(Some(event())), |_| Ok(()));
        assert_eq!(n, BATCH);
        // A failing handler ends the batch with its error.
        let mut calls = 0;
        let (n, err) = handle_batch(
            Duration::ZERO,
            |_| Ok(Some(event())),
            |_| {
                calls += 1;
                if calls == 2 { Err("bad") } else { Ok(()) }
            },
        );
        assert_eq!((n, err), (1, Some("bad")));
    }
}
