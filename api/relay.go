package api

import (
	"net"
	"regexp"
	"time"
)

// The role a certificate the hub issues carries, in its subject's
// Organization: a device's certificate acts only as that device, a relay's
// only as that relay (it may forward for devices, never be one).
const (
	OrgDevice = "Shoal device"
	OrgRelay  = "Shoal relay"
)

// HeaderDeviceCert carries, on a request a relay forwards to the hub, the
// certificate the device presented to the relay (standard base64 of its
// DER). The hub verifies it against its CA as if the device had connected
// itself, and accepts the header only from a relay's certificate.
const HeaderDeviceCert = "Shoal-Device-Cert"

// Reasons a hub or relay answers with about relays.
const (
	// ReasonRelayNotDevice: a relay's certificate was used where a device's
	// is needed, with no device certificate forwarded.
	ReasonRelayNotDevice = "relay-not-device"
	// ReasonDeviceNotRelay: a device's certificate was used for a relay's
	// endpoint, or forwarded another device's certificate.
	ReasonDeviceNotRelay = "device-not-relay"
	// ReasonUpstreamUnavailable: the relay cannot reach the hub now; the
	// request needs the hub (enrolment, attestation): retry later.
	ReasonUpstreamUnavailable = "upstream-unavailable"
	// ReasonArtifactUnknown: the relay knows no artifact by that URL or
	// digest in its fleet repo mirror; fetch it from its origin.
	ReasonArtifactUnknown = "artifact-unknown"
	// ReasonArtifactVerify: what the relay fetched, or holds, does not
	// match its sha256; it is not served.
	ReasonArtifactVerify = "artifact-verify-failed"
)

// Reasons a relay gives the pokes it makes itself (api.Poke.Reason).
const (
	// ReasonRelayMirror: the relay's mirror found a new fleet commit on its own fetch.
	ReasonRelayMirror = "relay-mirror"
	// ReasonRelayImport: a USB bundle was imported into the relay (shoal relay import).
	ReasonRelayImport = "relay-import"
)

// MaxRelayStatusBytes bounds a relay's status report.
const MaxRelayStatusBytes = 64 << 10

var hostRE = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$`)

// ValidHost reports whether h is an IP address or a lowercase DNS name, as
// a relay's server certificate may name it.
func ValidHost(h string) bool {
	return net.ParseIP(h) != nil || (len(h) <= 253 && hostRE.MatchString(h))
}

// RelayStatus is a relay's report of its own health, sent to the hub every
// interval (POST /v1/relay/status) and shown on the status page.
type RelayStatus struct {
	APIVersion string    `json:"apiVersion"`
	RelayID    string    `json:"relayID,omitempty"`
	Time       time.Time `json:"time"`
	Version    string    `json:"version,omitempty"`
	Started    time.Time `json:"started"`
	// Devices is how many devices talked to the relay in the last hour.
	Devices int            `json:"devices"`
	Mirror  RelayMirror    `json:"mirror"`
	Cache   RelayCache     `json:"cache"`
	Backlog RelayBacklog   `json:"backlog"`
	MQTT    *RelayMQTTLink `json:"mqtt,omitempty"`
}

// RelayMirror is the state of the relay's fleet repo mirror.
type RelayMirror struct {
	Commit  string    `json:"commit,omitempty"` // the mirrored branch's head
	Fetched time.Time `json:"fetched,omitempty"`
	Error   string    `json:"error,omitempty"` // the last fetch's failure, if it failed
}

// RelayCache is the use of the relay's artifact cache.
type RelayCache struct {
	Bytes int64 `json:"bytes"`
	Limit int64 `json:"limit"`
	Items int   `json:"items"`
	// UpstreamBytes counts bytes fetched from origins since the relay started.
	UpstreamBytes int64 `json:"upstreamBytes"`
	// ServedBytes counts bytes served to devices since the relay started.
	ServedBytes int64 `json:"servedBytes"`
}

// RelayBacklog is what the relay holds for the hub.
type RelayBacklog struct {
	Reports int       `json:"reports"`
	Devices int       `json:"devices"`
	Oldest  time.Time `json:"oldest,omitempty"` // when the oldest held report arrived
}

// RelayMQTTLink is the relay's link to the site's MQTT broker.
type RelayMQTTLink struct {
	Broker    string `json:"broker"`
	Connected bool   `json:"connected"`
}

// Validate checks a relay status before the hub stores it.
func (s *RelayStatus) Validate() error {
	if s == nil {
		return invalid("relay status: empty")
	}
	if err := checkVersion(s.APIVersion); err != nil {
		return err
	}
	if s.RelayID != "" && !ValidDeviceID(s.RelayID) {
		return invalid("relayID %q", s.RelayID)
	}
	if s.Time.IsZero() {
		return invalid("time: missing")
	}
	if s.Devices < 0 || s.Cache.Bytes < 0 || s.Cache.Limit < 0 || s.Cache.Items < 0 || s.Backlog.Reports < 0 || s.Backlog.Devices < 0 {
		return invalid("relay status: negative count")
	}
	return nil
}

// RelayPokes answers a relay's long poll (GET /v1/relay/poke): the pokes
// after its cursor, oldest first, which it passes on to its own devices.
type RelayPokes struct {
	APIVersion string      `json:"apiVersion"`
	Pokes      []RelayPoke `json:"pokes,omitempty"`
	Cursor     int64       `json:"cursor"` // pass as ?after= next time
}

// RelayPoke is one poke as a relay sees it: for every device when Group and
// Devices are empty, else for the devices named and those in Group.
// Devices lists only the relay's own devices.
type RelayPoke struct {
	ID      int64     `json:"id"`
	Group   string    `json:"group,omitempty"`
	Devices []string  `json:"devices,omitempty"`
	Commit  string    `json:"commit,omitempty"`
	Reason  string    `json:"reason"`
	Time    time.Time `json:"time"`
}

// Matches reports whether the poke is for a device with this ID and groups.
func (p RelayPoke) Matches(id string, groups []string) bool {
	if p.Group == "" && len(p.Devices) == 0 {
		return true
	}
	for _, d := range p.Devices {
		if d == id {
			return true
		}
	}
	for _, g := range groups {
		if p.Group != "" && g == p.Group {
			return true
		}
	}
	return false
}

// Validate checks the answer to a relay's poll.
func (p *RelayPokes) Validate() error {
	if p == nil {
		return invalid("relay pokes: empty")
	}
	if err := checkVersion(p.APIVersion); err != nil {
		return err
	}
	if p.Cursor < 0 || len(p.Pokes) > 1000 {
		return invalid("relay pokes: cursor %d, %d pokes", p.Cursor, len(p.Pokes))
	}
	for _, k := range p.Pokes {
		if k.ID <= 0 || k.ID > p.Cursor {
			return invalid("relay pokes: poke id %d beyond cursor %d", k.ID, p.Cursor)
		}
	}
	return nil
}

// Relay is the operator API's view of one relay.
type Relay struct {
	ID           string       `json:"id"`
	Hosts        []string     `json:"hosts"`
	Enrolled     time.Time    `json:"enrolled"`
	Revoked      bool         `json:"revoked,omitempty"`
	CertNotAfter time.Time    `json:"certNotAfter"`
	LastSeen     time.Time    `json:"lastSeen,omitempty"`
	Status       *RelayStatus `json:"status,omitempty"`
	// DeviceCount is how many devices last reported through the relay.
	DeviceCount int `json:"deviceCount"`
}
