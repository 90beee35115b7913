// Package attest is Shoal's trust layer: the device's TPM identity and
// attestation keys, TPM quotes over the boot PCRs and the application PCR
// (extended with the applied spec hash and running release version), the
// pure-Go Verifier the hub runs on those quotes, the NTP-checked Clock with
// lower bounds for devices without an RTC, and the composable health Gate the
// updater calls before committing a trial boot.
//
// The device side (Attester, Clock, Gate) is imported by agent; the hub imports
// only the Verifier, its NonceStore and the wire Quote. Nothing here needs cgo:
// the in-process TPM simulator lives in attest/tpmsim behind the tpmsim build tag.
package attest
