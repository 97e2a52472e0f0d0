//! Test harness placeholder (filled in below).
