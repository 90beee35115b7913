package api

import "time"

// Poke tells a long-polling device there is news: fetch now.
type Poke struct {
	APIVersion string    `json:"apiVersion"`
	ID         int64     `json:"id"`               // increasing; pass it back as ?after= on the next poll
	Commit     string    `json:"commit,omitempty"` // the new commit, when known
	Reason     string    `json:"reason"`           // webhook | operator
	Time       time.Time `json:"time"`
}

// Validate checks a poke a device receives.
func (p *Poke) Validate() error {
	if p == nil {
		return invalid("poke: empty")
	}
	if err := checkVersion(p.APIVersion); err != nil {
		return err
	}
	if p.ID <= 0 {
		return invalid("poke id %d", p.ID)
	}
	return nil
}

// PokeRequest is the operator's (or a Git webhook's) request to poke devices:
// all devices when both Group and Devices are empty.
type PokeRequest struct {
	APIVersion string   `json:"apiVersion"`
	Group      string   `json:"group,omitempty"`
	Devices    []string `json:"devices,omitempty"`
	Commit     string   `json:"commit,omitempty"`
	Reason     string   `json:"reason,omitempty"`
}

// Validate checks an operator poke request.
func (p *PokeRequest) Validate() error {
	if p == nil {
		return invalid("poke request: empty")
	}
	if err := checkVersion(p.APIVersion); err != nil {
		return err
	}
	if len(p.Devices) > 10000 {
		return invalid("devices: %d entries, at most 10000", len(p.Devices))
	}
	for _, d := range p.Devices {
		if !ValidDeviceID(d) {
			return invalid("devices: %q", d)
		}
	}
	if len(p.Group) > 128 || len(p.Commit) > 128 {
		return invalid("group or commit too long")
	}
	return nil
}

// PokeResult says how many devices a poke reached.
type PokeResult struct {
	APIVersion string `json:"apiVersion"`
	ID         int64  `json:"id"`
	Devices    int    `json:"devices"`
}

// TokenRequest asks the hub (operator API) for a one-time enrolment token.
type TokenRequest struct {
	APIVersion string        `json:"apiVersion"`
	DeviceID   string        `json:"deviceID"`
	TTL        time.Duration `json:"ttl,omitempty"` // nanoseconds; 0 = 24h
	Groups     []string      `json:"groups,omitempty"`
	// Relay makes a token for a site relay (shoal relay) named DeviceID:
	// it enrols a relay, never a device, and the relay's server
	// certificate names Hosts (its DNS names or IPs, as devices dial it).
	Relay bool     `json:"relay,omitempty"`
	Hosts []string `json:"hosts,omitempty"`
}

// Validate checks a token request.
func (r *TokenRequest) Validate() error {
	if r == nil {
		return invalid("token request: empty")
	}
	if err := checkVersion(r.APIVersion); err != nil {
		return err
	}
	if !ValidDeviceID(r.DeviceID) {
		return invalid("deviceID %q", r.DeviceID)
	}
	if r.TTL < 0 || r.TTL > 365*24*time.Hour {
		return invalid("ttl %v: want 0..8760h", r.TTL)
	}
	return validHosts(r.Relay, r.Hosts)
}

// validHosts checks a relay token's host names: one to 16 for a relay, none otherwise.
func validHosts(relay bool, hosts []string) error {
	if !relay {
		if len(hosts) > 0 {
			return invalid("hosts: only for a relay token")
		}
		return nil
	}
	if len(hosts) == 0 || len(hosts) > 16 {
		return invalid("hosts: a relay needs 1 to 16 host names or IPs, got %d", len(hosts))
	}
	for _, h := range hosts {
		if !ValidHost(h) {
			return invalid("hosts: %q is not an IP or a lowercase DNS name", h)
		}
	}
	return nil
}

// TokenResponse holds a token; the hub keeps only its hash.
type TokenResponse struct {
	APIVersion string    `json:"apiVersion"`
	DeviceID   string    `json:"deviceID"`
	Token      string    `json:"token"`
	Expires    time.Time `json:"expires"`
	// CAFingerprint is the hex sha256 of the hub CA certificate (DER): with
	// the token, all a device needs to trust the hub on first contact.
	CAFingerprint string `json:"caFingerprint"`
	// Relay is set on a relay's token, with the hosts its certificate names.
	Relay bool     `json:"relay,omitempty"`
	Hosts []string `json:"hosts,omitempty"`
}

// TokenRevokeResult says which token a revocation revoked.
type TokenRevokeResult struct {
	APIVersion string    `json:"apiVersion"`
	Kind       string    `json:"kind"`               // enrol | relay | operator
	DeviceID   string    `json:"deviceID,omitempty"` // the device (or relay) an enrolment token was for
	Expires    time.Time `json:"expires,omitzero"`
	// Used is when the token enrolled its device; revoking a used token
	// does not revoke the device.
	Used time.Time `json:"used,omitzero"`
}

// TokenRevokeRequest revokes an unused enrolment token (operator API).
type TokenRevokeRequest struct {
	APIVersion string `json:"apiVersion"`
	Token      string `json:"token"`
}

// Validate checks a token revocation request.
func (r *TokenRevokeRequest) Validate() error {
	if r == nil {
		return invalid("token revoke: empty")
	}
	if err := checkVersion(r.APIVersion); err != nil {
		return err
	}
	if r.Token == "" || len(r.Token) > 256 {
		return invalid("token: missing or too long")
	}
	return nil
}

// Device is the operator API's view of one device.
type Device struct {
	ID           string    `json:"id"`
	KeyKind      string    `json:"keyKind"`
	Enrolled     time.Time `json:"enrolled"`
	Revoked      bool      `json:"revoked,omitempty"`
	CertNotAfter time.Time `json:"certNotAfter"`
	State        State     `json:"state,omitempty"`
	Groups       []string  `json:"groups,omitempty"`
	LatestSeq    uint64    `json:"latestSeq"`
	LastSeen     time.Time `json:"lastSeen,omitempty"`
	AttestOK     *bool     `json:"attestOK,omitempty"`
}
