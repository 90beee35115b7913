package rollout

import (
	"crypto"
	"crypto/rand"
	"encoding/json"
	"fmt"

	"github.com/shoalfleet/shoal/api"
	"github.com/shoalfleet/shoal/rollout/grant"
)

// Sign makes a grant of body with the hub CA's key (ECDSA), which every
// enrolled device holds the certificate of; rollout/grant checks it.
func Sign(key crypto.Signer, body api.GrantBody) (*api.Grant, error) {
	body.Version = grant.Version
	b, err := json.Marshal(&body)
	if err != nil {
		return nil, fmt.Errorf("sign grant: %w", err)
	}
	sig, err := key.Sign(rand.Reader, grant.Digest(b), crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("sign grant: %w", err)
	}
	return &api.Grant{Body: b, Signature: sig}, nil
}
