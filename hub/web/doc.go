// Package web will hold the hub's fleet status page (html/template with
// embedded assets), mounted by the hub through hub.Options.Web. It reads the
// hub store and imports nothing device-side.
package web
