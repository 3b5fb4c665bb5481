#!/usr/bin/perl
# The in-sandbox MCP forwarder of forwarder.py, for sandboxes without python3 (a container
# from hal's Debian image: perl-base is Essential there, python is not). Same contract:
# `perl forwarder.pl SOCKET` connects to the agent's MCP socket (retrying up to 10 s while it
# is missing) and copies stdin to it and it to stdout until either side closes. Bytes only.
use strict;
use warnings;
use IO::Socket::INET;
use IO::Socket::UNIX;
use Socket qw(SOCK_STREAM);

my $path = shift;
if (!defined $path || @ARGV) {
    print STDERR "usage: forwarder.pl SOCKET\n";
    exit 2;
}
my $deadline = time + 10;
my $sock;
while (1) {
    if ($path =~ /^tcp:(.+):(\d+)$/) {    # a port the provider carries to the host socket
        $sock = IO::Socket::INET->new(PeerAddr => $1, PeerPort => $2, Proto => 'tcp');
    } else {
        $sock = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => $path);
    }
    last if $sock;
    if (time >= $deadline) {
        print STDERR "hal: cannot reach hal's MCP socket $path: $!\n";
        exit 1;
    }
    select(undef, undef, undef, 0.2);
}

sub copy {
    my ($from, $to) = @_;
    my $buf;
    while (my $n = sysread($from, $buf, 65536)) {
        my $off = 0;
        while ($off < $n) {
            my $wrote = syswrite($to, $buf, $n - $off, $off);
            return unless defined $wrote;
            $off += $wrote;
        }
    }
}

my $pid = fork();
die "hal: MCP forwarder cannot fork: $!\n" unless defined $pid;
if ($pid == 0) {
    copy(\*STDIN, $sock);
    shutdown($sock, 1);    # the CLI closed our stdin: the server sees EOF
    exit 0;
}
binmode STDOUT;
copy($sock, \*STDOUT);
kill 'TERM', $pid;
waitpid($pid, 0);
exit 0;
