//! The 2-byte length framing of datagrams over TCP (the rendezvous's
//! fallback listener and the agent's link): an arbitrary byte stream is
//! read frame by frame until it ends or breaks. Checked besides "no panic":
//! every frame holds exactly the bytes its header announced, and no more
//! is taken from the stream than it carried.

use agentnet::sys::tcp_frames::{MAX_FRAME_LEN, read_frame, write_frame};

/// Runs the target on one input.
pub fn run(bytes: &[u8]) {
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
        return;
    };
    runtime.block_on(async {
        let mut stream = bytes;
        let mut frame = Vec::new();
        let mut consumed = 0usize;
        while let Ok(Some(())) = read_frame(&mut stream, &mut frame).await {
            assert!(frame.len() <= MAX_FRAME_LEN, "frame over the limit");
            consumed += 2 + frame.len();
            assert_eq!(consumed, bytes.len() - stream.len(), "frame length");
            // Whatever was read writes back as the same bytes.
            let mut again = Vec::new();
            assert!(write_frame(&mut again, &frame).await.is_ok());
            assert_eq!(
                again,
                bytes[consumed - again.len()..consumed],
                "frame round trip"
            );
        }
    });
}
