#!/usr/bin/perl
# The in-sandbox forwarder of forwarder.py, for sandboxes without python3 (a container from
# hal's Debian image: perl-base is Essential there, python is not). Same contract:
# `perl forwarder.pl PORT SOCKET [PORT SOCKET ...]` binds each 127.0.0.1:PORT, forks a server
# and returns 0 once they listen; the server lives until the launcher (which became the agent
# by exec) is gone. One child per connection carries bytes both ways, half-closes included.
# A PORT of 0 takes a free port the system picks, printed on stdout (one line per 0) before
# the parent exits.
# Bytes only: the token, the checks and the real key live on the host.
use strict;
use warnings;
use IO::Select;
use IO::Socket::INET;
use IO::Socket::UNIX;
use POSIX ();
use Socket qw(AF_UNIX IPPROTO_TCP SOCK_STREAM SOL_SOCKET SO_SNDTIMEO TCP_NODELAY
    pack_sockaddr_un);

# How long a connection waits for room in the gateway's listen backlog (a blocking unix
# connect waits up to the socket's send timeout), and the answer when it found none, or
# nothing listens: a 503 the agents' clients retry, never a close with no answer.
my $CONNECT_S = 10;
my $BUSY_BODY = '{"type": "error", "error": {"type": "overloaded_error", "code": '
    . '"gateway_busy", "message": "hal gateway: busy, try again"}}';
my $BUSY = "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
    . "retry-after: 1\r\nconnection: close\r\ncontent-length: " . length($BUSY_BODY)
    . "\r\n\r\n" . $BUSY_BODY;

if (!@ARGV || @ARGV % 2) {
    print STDERR "usage: forwarder.pl PORT SOCKET [PORT SOCKET ...]\n";
    exit 2;
}
my (%path_of, @listeners);
while (@ARGV) {
    my ($port, $path) = splice(@ARGV, 0, 2);
    my $listener = IO::Socket::INET->new(
        LocalAddr => '127.0.0.1', LocalPort => $port, Proto => 'tcp', Listen => 128,
        ReuseAddr => 1,
    );
    if (!$listener) {
        print STDERR "hal: gateway forwarder cannot listen on 127.0.0.1:$port: $!\n";
        exit 1;
    }
    $path_of{fileno $listener} = $path;
    print $listener->sockport, "\n" if $port == 0;
    push @listeners, $listener;
}
my $watched = getppid();
STDOUT->flush();
my $pid = fork();
die "hal: gateway forwarder cannot fork: $!\n" unless defined $pid;
exit 0 if $pid;
POSIX::setsid();
open STDIN, '<', '/dev/null';
open STDOUT, '>', '/dev/null';
open STDERR, '>', '/dev/null';
$SIG{CHLD} = 'IGNORE';    # connection children are reaped by the kernel
my $select = IO::Select->new(@listeners);
while (kill(0, $watched) || $!{EPERM}) {
    for my $listener ($select->can_read(1.0)) {
        my $client = $listener->accept or next;
        my $path = $path_of{fileno $listener};
        my $child = fork();
        if (defined $child && $child == 0) {
            close $_ for @listeners;
            serve($client, $path);
            POSIX::_exit(0);
        }
        close $client;
    }
}
exit 0;

sub serve {
    my ($client, $path) = @_;
    my $upstream = connect_upstream($path);
    if (!$upstream) {
        syswrite($client, $BUSY);
        shutdown($client, 1);
        my $select = IO::Select->new($client);    # read what it still sends: a close with
        while ($select->can_read($CONNECT_S)) {    # its request unread would reset the answer
            last unless sysread($client, my $ignored, 65536);
        }
        return;
    }
    setsockopt($client, IPPROTO_TCP, TCP_NODELAY, 1);
    my %peer = (fileno($client) => $upstream, fileno($upstream) => $client);
    my $select = IO::Select->new($client, $upstream);
    while ($select->count) {
        for my $from ($select->can_read) {
            my $to = $peer{fileno $from};
            my $n = sysread($from, my $buffer, 65536);
            if (!$n) {    # EOF (or an error): pass the half-close on
                $select->remove($from);
                shutdown($to, 1);
                next;
            }
            my $off = 0;
            while ($off < $n) {
                my $written = syswrite($to, $buffer, $n - $off, $off);
                return unless defined $written;
                $off += $written;
            }
        }
    }
}

sub connect_upstream {
    my ($path) = @_;
    socket(my $upstream, AF_UNIX, SOCK_STREAM, 0) or return;
    setsockopt($upstream, SOL_SOCKET, SO_SNDTIMEO, pack('l!l!', $CONNECT_S, 0));
    connect($upstream, pack_sockaddr_un($path)) or return;
    setsockopt($upstream, SOL_SOCKET, SO_SNDTIMEO, pack('l!l!', 0, 0));
    return $upstream;
}
