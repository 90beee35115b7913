// Package pemkeys reads PEM "PUBLIC KEY" (PKIX) blocks: the trust roots for
// releases and the bundle keys for provisioning share this format.
package pemkeys

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
)

// ErrNone means the data held no PEM PUBLIC KEY block.
var ErrNone = errors.New("no PEM PUBLIC KEY block")

// Parse returns every PUBLIC KEY block of data, in order; other blocks are skipped.
func Parse(data []byte) ([]crypto.PublicKey, error) {
	var keys []crypto.PublicKey
	for {
		var blk *pem.Block
		blk, data = pem.Decode(data)
		if blk == nil {
			break
		}
		if blk.Type != "PUBLIC KEY" {
			continue
		}
		k, err := x509.ParsePKIXPublicKey(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("public key %d: %w", len(keys)+1, err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, ErrNone
	}
	return keys, nil
}
