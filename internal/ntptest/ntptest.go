// Package ntptest is an NTP server on loopback for tests and benchmarks: it
// speaks the NTP wire format (RFC 5905, server mode) with a clock offset from
// the system clock by a known amount.
package ntptest

import (
	"encoding/binary"
	"net"
	"sync"
	"time"
)

// Responder answers NTP client requests.
type Responder struct {
	Offset  time.Duration // added to the system clock in every answer
	Stratum uint8         // 0 is a kiss-o'-death answer
	Leap    uint8         // 3 = not synchronised
	Silent  bool          // read requests, never answer
}

// Server is a running Responder.
type Server struct {
	conn net.PacketConn
	done chan struct{}
	once sync.Once
}

// Start serves r on a loopback UDP port until Close.
func Start(r Responder) (*Server, error) {
	conn, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	s := &Server{conn: conn, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		r.serve(conn)
	}()
	return s, nil
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.conn.LocalAddr().String() }

// Close stops the server and waits for it.
func (s *Server) Close() error {
	var err error
	s.once.Do(func() {
		err = s.conn.Close()
		<-s.done
	})
	return err
}

func (r Responder) serve(conn net.PacketConn) {
	buf := make([]byte, 512)
	for {
		n, from, err := conn.ReadFrom(buf)
		if err != nil {
			return
		}
		if n < 48 || r.Silent {
			continue
		}
		recv := time.Now().Add(r.Offset)
		p := make([]byte, 48)
		p[0] = r.Leap<<6 | (buf[0]>>3&7)<<3 | 4 // LI, the client's version, mode server
		p[1] = r.Stratum
		p[2] = buf[2]                                 // poll
		p[3] = 0xec                                   // precision 2^-20 s
		binary.BigEndian.PutUint32(p[8:], 0x00000010) // root dispersion ~0.2 ms
		copy(p[12:16], "TEST")                        // reference ID
		PutTime(p[16:], recv.Add(-time.Second))       // reference time
		copy(p[24:32], buf[40:48])                    // origin = the client's transmit
		PutTime(p[32:], recv)                         // receive
		PutTime(p[40:], time.Now().Add(r.Offset))     // transmit
		if _, err := conn.WriteTo(p, from); err != nil {
			return
		}
	}
}

// PutTime writes t as a 64-bit NTP timestamp.
func PutTime(b []byte, t time.Time) {
	const epochOffset = 2208988800 // seconds from 1900 to 1970
	ns := t.UnixNano()
	sec := uint64(ns/1e9) + epochOffset
	frac := (uint64(ns%1e9) << 32) / 1e9
	binary.BigEndian.PutUint32(b, uint32(sec))
	binary.BigEndian.PutUint32(b[4:], uint32(frac))
}
